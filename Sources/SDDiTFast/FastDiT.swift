import Glibc
import SDDiTCore

// The plain DiT training step of `oracle bench` (the peer's bench_dit_step / dit_forward):
// patch embed + pos_embed [1, T, D] (no CLS), the encoder's adaLN-Zero blocks over all T
// tokens, final layer LN + modulate + Linear(D, p p C), unpatchify, EDM preconditioning and
// loss with a per-sample sigma, backward, AdamW. No decoder, teacher, head or centers.
// It reuses FastModel's block / blockBackward / conditioning and kernels; buffers are named
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
                P[s.key] = Tensor(shape: s.shape, data: sinCos(width: cfg.hiddenSize, grid: cfg.grid))
                continue
            }
            let fanIn = s.shape.dropFirst().reduce(1, *)
            let std = s.key.hasSuffix("bias") ? 0.05 : min(0.2, max(0.02, 1 / Double(fanIn).squareRoot()))
            P[s.key] = Tensor(shape: s.shape, data: rng.normals(s.count, std: std))
        }
        return P
    }

    /// MAE's 2-D sin-cos table [T, W] in Double (first W/2 channels: column, last W/2: row).
    static func sinCos(width W: Int, grid: Int) -> [Double] {
        let q = W / 4
        var out = [Double](repeating: 0, count: grid * grid * W)
        for t in 0..<(grid * grid) { for half in 0..<2 { for kk in 0..<q {
            let pos = Double(half == 0 ? t % grid : t / grid), w = Glibc.pow(10000, -Double(kk) / Double(q))
            out[t * W + half * 2 * q + kk] = Glibc.sin(pos * w)
            out[t * W + half * 2 * q + q + kk] = Glibc.cos(pos * w)
        } } }
        return out
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

    /// One plain-DiT training step: forward, EDM loss (mean of lambda(sigma) (D - x0)^2),
    /// backward with the loss scale, unscale, GradScaler decision, AdamW.
    /// The model must come from `plainDiT` (its parameters are the DiT keys).
    public func ditTrainStep(_ I: FastDiTInputs) throws -> FastStepResult {
        let N = I.labels.count, C = cfg.inChannels, Hs = cfg.inputSize, per = C * Hs * Hs
        let Tn = cfg.tokens, D = cfg.hiddenSize, p = cfg.patchSize, g = cfg.grid, Pd = cfg.patchDim
        let P = student, G = grads, scale = scaler.scale
        for t in grads.values { t.zero() }
        let coef = I.sigma.map { EDMScalars(sigma: $0, sigmaData: cfg.sigmaData) }
        // x = x0 + sigma n; network input c_in x
        let xIn = ws.get("dit.x_in", [N, C, Hs, Hs])
        var xS = [Double](repeating: 0, count: N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            xS[j] = I.x0[j] + I.sigma[n] * I.noise[j]
            xIn.p[j] = Float(coef[n].cIn * xS[j])
        } }
        if prec.isPure { prec.round(xIn.p, xIn.count) }
        // patch embed + pos_embed (no CLS row)
        let patches = ws.get("dit.patches", [N, Tn, Pd])
        for n in 0..<N { for r in 0..<g { for cl in 0..<g { for c in 0..<C { for i in 0..<p { for j in 0..<p {
            patches.p[((n * g + r) * g + cl) * Pd + (c * p + i) * p + j] = xIn.p[((n * C + c) * Hs + r * p + i) * Hs + cl * p + j]
        } } } } } }
        let tokens = ws.get("dit.tokens", [N, Tn, D])
        k.linear(patches, FT(p: P["x_embedder.proj.weight"]!.p, shape: [D, Pd]), P["x_embedder.proj.bias"]!, tokens)
        let pos = P["pos_embed"]!
        for n in 0..<N { for i in 0..<(Tn * D) { tokens.p[n * Tn * D + i] += pos.p[i] } }
        try out("dit.tokens", "patch embed + pos_embed", tokens, [("x_in", xIn)])
        let (temb, t1, t1s, c, siluC) = try conditioning("dit", P, cNoise: coef.map { $0.cNoise }, labels: I.labels)
        var hs = [tokens]
        for i in 0..<cfg.depth {
            hs.append(try block("dit.block.\(i)", "blocks.\(i).", P, hs[i], siluC, heads: cfg.numHeads))
        }
        // final layer: LN, modulate by Linear(SiLU(c)) [2D], Linear(D, p p C)
        let modF = ws.get("dit.final.mod", [N, 2 * D])
        k.linear(siluC, P["final_layer.adaLN_modulation.1.weight"]!, P["final_layer.adaLN_modulation.1.bias"]!, modF)
        let mF = ws.get("dit.final.norm", [N, Tn, D]), meanF = ws.get("dit.final.mean", [N * Tn]), rstdF = ws.get("dit.final.rstd", [N * Tn])
        k.lnModulate(hs[cfg.depth], modF, shiftChunk: 0, scaleChunk: 1, chunks: 2, mF, mean: meanF, rstd: rstdF)
        let o = ws.get("dit.final", [N, Tn, Pd])
        k.linear(mF, P["final_layer.linear.weight"]!, P["final_layer.linear.bias"]!, o)
        try out("dit.final", "final_layer Linear", o, [("final.norm", mF)])
        let F = ws.get("dit.F", [N, C, Hs, Hs]), Dt = ws.get("dit.D", [N, C, Hs, Hs])
        unpatchify(o, F)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            Dt.p[j] = Float(coef[n].cSkip * xS[j] + coef[n].cOut * Double(F.p[j]))
        } }
        if prec.isPure { prec.round(Dt.p, Dt.count) }
        // EDM loss, lambda in float32 (autocast) or the half type (pure), as the SD-DiT step
        let lam: [Float] = coef.map { e in prec.isPure ? prec.round(Float(e.lambda)) : Float(e.lambda) }
        var loss = 0.0
        let dD = ws.get("dit.dD", [N, C, Hs, Hs]), dOut = ws.get("d.dit.final", [N, Tn, Pd])
        let numel = Float(N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            let e: Float = Dt.p[j] - Float(I.x0[j])
            loss += Double(lam[n] * e * e)
            dD.p[j] = scale * 2 * lam[n] * e / numel * Float(coef[n].cOut)
        } }
        loss /= Double(N * per)
        unpatchify(dOut, dD, inverse: true)
        // backward
        let dsiluC = ws.get("d.dit.siluC", [N, D], zero: true)
        let dmF = ws.get("d.dit.final.norm", [N, Tn, D], zero: true)
        k.linearBackward(dOut, mF, P["final_layer.linear.weight"]!, dx: dmF, dw: G["final_layer.linear.weight"], db: G["final_layer.linear.bias"])
        let dmodF = ws.get("d.dit.final.mod", [N, 2 * D], zero: true)
        var dz = ws.get("d.dit.final.z", [N, Tn, D], zero: true)
        k.lnModulateBackward(dmF, hs[cfg.depth], modF, shiftChunk: 0, scaleChunk: 1, chunks: 2, mean: meanF, rstd: rstdF, dx: dz, dmod: dmodF)
        k.linearBackward(dmodF, siluC, P["final_layer.adaLN_modulation.1.weight"]!, dx: dsiluC,
                         dw: G["final_layer.adaLN_modulation.1.weight"], db: G["final_layer.adaLN_modulation.1.bias"])
        for i in stride(from: cfg.depth - 1, through: 0, by: -1) {
            dz = try blockBackward("dit.block.\(i)", "blocks.\(i).", P, x: hs[i], siluC: siluC, dy: dz, dsiluC: dsiluC, heads: cfg.numHeads)
        }
        // patch embedding (pos_embed is fixed; no gradient to the input image)
        k.linearBackward(dz, patches, FT(p: P["x_embedder.proj.weight"]!.p, shape: [D, Pd]), dx: nil,
                         dw: FT(p: G["x_embedder.proj.weight"]!.p, shape: [D, Pd]), db: G["x_embedder.proj.bias"])
        // conditioning: siluC = SiLU(c); c = mlp.2(SiLU(mlp.0(temb))) + table[y]
        let dc = ws.get("d.dit.c", [N, D])
        k.siluBackward(dsiluC, c, dc, accumulate: false)
        let table = G["y_embedder.embedding_table.weight"]!
        for n in 0..<N { for i in 0..<D { table.p[I.labels[n] * D + i] += dc.p[n * D + i] } }
        let dt1s = ws.get("d.dit.t1s", [N, D], zero: true)
        k.linearBackward(dc, t1s, P["t_embedder.mlp.2.weight"]!, dx: dt1s, dw: G["t_embedder.mlp.2.weight"], db: G["t_embedder.mlp.2.bias"])
        let dt1 = ws.get("d.dit.t1", [N, D])
        k.siluBackward(dt1s, t1, dt1, accumulate: false)
        k.linearBackward(dt1, temb, P["t_embedder.mlp.0.weight"]!, dx: nil, dw: G["t_embedder.mlp.0.weight"], db: G["t_embedder.mlp.0.bias"])
        // unscale, check, GradScaler, AdamW
        var found = false
        for (_, t) in grads {
            if scale != 1 {
                let tp = t.p
                parallelRanges(t.count) { lo, hi in for i in lo..<hi { tp[i] /= scale } }
            }
            if prec.isPure { prec.round(t.p, t.count) }
            if !found, !allFinite(t.p, t.count) { found = true }
        }
        let stepped = scaler.update(foundNonFinite: found)
        if stepped { adamW() }
        return FastStepResult(losses: ["generative": loss, "total": loss], skipped: !stepped, lossScale: scale)
    }
}

/// Whether all n floats are finite: x * 0 is 0 for finite x and NaN for inf / NaN, summed in
/// 4 vector lanes (no early exit, so it vectorizes), split over the BLAS threads.
func allFinite(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> Bool {
    let parts = 8
    var flags = [Float](repeating: 0, count: parts)
    flags.withUnsafeMutableBufferPointer { fb in
        let f = fb.baseAddress!
        parallelRanges(parts, minPerThread: n >= 65536 ? 1 : parts) { lo, hi in
            for part in lo..<hi {
                let a = n * part / parts, b = n * (part + 1) / parts
                var acc = SIMD4<Float>(repeating: 0)
                var j = a
                let raw = UnsafeRawPointer(p)
                while j + 4 <= b { acc += raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self) * 0; j += 4 }
                var s = acc.sum()
                while j < b { s += p[j] * 0; j += 1 }
                f[part] = s
            }
        }
    }
    return flags.allSatisfy { $0 == 0 }
}
