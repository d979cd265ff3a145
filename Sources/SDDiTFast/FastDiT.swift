import Glibc
import SDDiTCore

// The plain DiT training step of `oracle bench` (the peer's bench_dit_step / dit_forward):
// patch embed + pos_embed [1, T, D] (no CLS), the encoder's adaLN-Zero blocks over all T
// tokens, final layer LN + modulate + Linear(D, p p C), unpatchify, EDM preconditioning and
// loss with a per-sample sigma, backward, AdamW. No decoder, teacher, head or centers.
// It is made of the SD-DiT step's layers (Layers/) and preconditioning; buffers are named
// "dit.*" so a plain-DiT model never shares them with an SD-DiT one.

/// Parameter layout and seeded parameters of the plain DiT (peer: `param_shapes(cfg, "dit")`).
public enum PlainDiT {
    /// Keys and shapes in forward order; `pos_embed` is fixed.
    public static func parameters(_ cfg: ModelConfig) -> [ParameterSpec] {
        let D = cfg.hiddenSize, C = cfg.inChannels, p = cfg.patchSize, T = cfg.tokens, hm = cfg.mlpHidden
        var out: [ParameterSpec] = []
        func add(_ k: String, _ s: [Int]) { out.append(ParameterSpec(key: k, shape: s, part: .encoder, frozen: k == "pos_embed")) }
        add("x_embedder.proj.weight", [D, C, p, p]); add("x_embedder.proj.bias", [D])
        add("pos_embed", [1, T, D])
        add("t_embedder.mlp.0.weight", [D, 256]); add("t_embedder.mlp.0.bias", [D])
        add("t_embedder.mlp.2.weight", [D, D]); add("t_embedder.mlp.2.bias", [D])
        add("y_embedder.embedding_table.weight", [cfg.numClasses + 1, D])
        for i in 0..<cfg.depth {
            let b = "blocks.\(i)."
            add(b + "attn.qkv.weight", [3 * D, D]); add(b + "attn.qkv.bias", [3 * D])
            add(b + "attn.proj.weight", [D, D]); add(b + "attn.proj.bias", [D])
            add(b + "mlp.fc1.weight", [hm, D]); add(b + "mlp.fc1.bias", [hm])
            add(b + "mlp.fc2.weight", [D, hm]); add(b + "mlp.fc2.bias", [D])
            add(b + "adaLN_modulation.1.weight", [6 * D, D]); add(b + "adaLN_modulation.1.bias", [6 * D])
        }
        add("final_layer.adaLN_modulation.1.weight", [2 * D, D]); add("final_layer.adaLN_modulation.1.bias", [2 * D])
        add("final_layer.linear.weight", [p * p * C, D]); add("final_layer.linear.bias", [p * p * C])
        return out
    }

    /// Every trainable tensor random and non-zero (as the reference's `.random` init and the
    /// peer: biases N(0, 0.05), weights N(0, clamp(fan_in^-1/2, 0.02, 0.2))); pos_embed is
    /// SPEC §2.2's sin-cos table without the CLS row.
    public static func randomParameters(_ cfg: ModelConfig, seed: UInt64) -> [String: Tensor<Double>] {
        var rng = SeededRandom(seed: seed)
        var P: [String: Tensor<Double>] = [:]
        for s in parameters(cfg) {
            if s.key == "pos_embed" {
                P[s.key] = SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: false)
                continue
            }
            P[s.key] = Tensor(shape: s.shape, data: rng.normals(s.count, std: Initialization.randomStd(s)))
        }
        return P
    }
}

/// One plain-DiT step's inputs: x = x0 + sigma n, per-sample sigma.
public struct FastDiTInputs: Sendable {
    public var x0: [Double], labels: [Int], sigma: [Double], noise: [Double]
    public init(x0: [Double], labels: [Int], sigma: [Double], noise: [Double]) {
        self.x0 = x0; self.labels = labels; self.sigma = sigma; self.noise = noise
    }
}

extension FastModel {
    /// A plain-DiT model (parameters from `PlainDiT.parameters(cfg)` keys).
    public static func plainDiT(_ cfg: ModelConfig, precision: FastPrecision, parameters: [String: Tensor<Double>]) -> FastModel {
        FastModel(cfg, precision: precision, specs: PlainDiT.parameters(cfg), parameters: parameters)
    }

    /// One plain-DiT training step: forward, EDM loss (the SD-DiT step's layer,
    /// Layers/FastEDMLoss.swift), backward with the loss scale, unscale, GradScaler decision,
    /// AdamW. The model must come from `plainDiT` (its parameters are the DiT keys).
    public func ditTrainStep(_ I: FastDiTInputs) throws -> FastStepResult {
        try validate(I)
        guard let adam else { preconditionFailure("FastModel: the plain DiT model has no optimizer") }
        let N = I.labels.count, C = cfg.inChannels, Hs = cfg.inputSize, ws = ctx.ws
        let net = plainDiTNetwork, scale = scaler.scale
        for t in grads.values { t.zero() }
        // x = x0 + sigma n; D = c_skip x + c_out F(c_in x), stored in float32
        let coef = I.sigma.map { EDMCoefficients<Double>(sigma: $0, sigmaData: cfg.sigmaData) }
        let xS = EDMNoise.noised(x0: I.x0, sigma: I.sigma, noise: I.noise)
        let denoised = try FastEDMPrecond.forward(ctx, xS, coef, xIn: ws.get("dit.x_in", [N, C, Hs, Hs])) { xIn, cNoise in
            try net.forward(ctx, xIn: xIn, cNoise: cNoise, labels: I.labels)
        }.D
        let Dt = ws.get("dit.D", [N, C, Hs, Hs])
        FastEDMPrecond.store(ctx, denoised, Dt)
        let lam = ctx.variant.edmUnweighted ? coef.map { _ in 1 } : FastEDMLoss.weights(prec, coef)
        let loss = FastEDMLoss.forward(D: Dt, x0: I.x0, lambda: lam)
        // backward: dF = c_out dD (cast to the half type), the network
        let dF = ws.get("dit.dD", [N, C, Hs, Hs])
        FastEDMLoss.backward(D: Dt, x0: I.x0, lambda: lam, scale: scale, dD: dF)
        try FastEDMPrecond.backward(ctx, coef, dF, F: "dit.F", scale: scale)
        let dOut = ws.get("d." + ActivationName.final(ActivationName.dit), [N, cfg.tokens, cfg.patchDim])
        FastUnpatchify.backward(cfg, dImage: dF, dTokens: dOut, cij: ctx.variant.unpatchifyCIJ)
        let dsiluC = ws.get("d.dit.siluC", [N, cfg.hiddenSize], zero: true)
        try net.backward(ctx, dOut: dOut, dsiluC: dsiluC)
        // unscale, check, GradScaler, AdamW
        let bad = FastUnscale.apply(ctx, grads, keys: trainableKeys, scale: scale)
        let stepped = scaler.update(foundNonFinite: bad != nil)
        if stepped { adam.update(ctx, params: student, grads: grads) }
        return FastStepResult(losses: [LossName.generative: loss, LossName.total: loss], skipped: !stepped, lossScale: scale)
    }
}

/// The plain DiT network by layer: patch embed + pos_embed [1, T, D] (no CLS), the
/// conditioning, the encoder's adaLN-Zero blocks over all T tokens, final_layer, unpatchify.
final class FastPlainDiT: FastParameterized {
    let patchEmbed = FastPatchEmbed(branch: ActivationName.dit)
    let conditioning = FastConditioning(branch: ActivationName.dit)
    let blocks: [FastDiTBlock]
    let final = FastFinalLayer(branch: ActivationName.dit)

    init(_ cfg: ModelConfig) {
        blocks = (0..<cfg.depth).map { FastDiTBlock(name: ActivationName.ditBlock($0), key: "blocks.\($0).", heads: cfg.numHeads) }
    }

    func bind(_ P: TensorTable, gradients G: TensorTable?) {
        patchEmbed.bind(P, gradients: G); conditioning.bind(P, gradients: G); final.bind(P, gradients: G)
        for b in blocks { b.bind(P, gradients: G) }
    }

    /// F [N, C, H, W] from x_in.
    func forward(_ ctx: FastContext, xIn: FT, cNoise: [Double], labels: [Int]) throws -> FT {
        var h = try patchEmbed.forward(ctx, xIn: xIn)
        let siluC = try conditioning.forward(ctx, cNoise: cNoise, labels: labels)
        for b in blocks { h = try b.forward(ctx, h, siluC) }
        let o = try final.forward(ctx, h, siluC)
        let F = ctx.ws.get("dit.F", xIn.shape)
        FastUnpatchify.forward(ctx.cfg, o, F, cij: ctx.variant.unpatchifyCIJ)
        return F
    }

    /// From dout [N, T, p p C] (the gradient of F's tokens): every parameter gradient.
    func backward(_ ctx: FastContext, dOut: FT, dsiluC: FT) throws {
        var dz = try final.backward(ctx, dOut: dOut, dsiluC: dsiluC)
        for b in blocks.reversed() { dz = try b.backward(ctx, dy: dz, dsiluC: dsiluC) }
        patchEmbed.backward(ctx, dTokens: dz)
        try conditioning.backward(ctx, dsiluC: dsiluC)
    }
}
