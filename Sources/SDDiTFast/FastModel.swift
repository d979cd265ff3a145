import Glibc
import SDDiTCore

/// The float32 / mixed-precision SD-DiT: the whole training step and the sampler of SPEC
/// §2-6 on OpenBLAS, a second implementation independent of the reference. Activation
/// names are SPEC's; buffers live in a workspace reused from step to step. EDM scalars,
/// loss sums and the sampler's x and sigmas are kept in Double (as EDM's code does).
public final class FastModel {
    public let cfg: ModelConfig
    public let prec: FastPrecision
    public let monitor = Monitor()
    public var scaler: LossScaler
    let ws = Workspace()
    let k: Kernels
    public private(set) var student: [String: FT] = [:]
    public private(set) var teacher: [String: FT] = [:]
    public private(set) var grads: [String: FT] = [:]
    var adamM: [String: FT] = [:], adamV: [String: FT] = [:]
    public internal(set) var adamStep = 0
    /// False for a forward-and-backward-only model (no AdamW moments: it cannot step).
    public private(set) var hasOptimizer = true
    public var centerCls: [Float], centerPatch: [Float]
    /// Activations of the last step by SPEC name (filled when `record` is set).
    public var record = false
    public internal(set) var activations: [String: (shape: [Int], values: [Float])] = [:]
    /// Weight of the discriminative losses in the total, L = L_G + w (L_D^cls + L_D^patch):
    /// 1 is SPEC §4 (bit-identical to the unweighted sum); 0 is the paper's table-3 ablation
    /// "without discriminative loss" (the teacher still runs, so L_D is still reported).
    public var discriminativeWeight: Float = 1
    /// Deliberate deviations from SPEC, for planted-bug files (tests); none by default.
    public var variant = FastVariant()
    /// The patch embedding's kernels: TF32 operands under `variant.tf32PatchEmbedding` (cuDNN's
    /// default for convolutions), this model's otherwise.
    var patchKernels: Kernels { variant.tf32PatchEmbedding && prec == .fp32 ? Kernels(prec: .tf32, ws: ws) : k }

    public var workspaceBytes: Int { ws.bytes }
    var labelsForBackward: [Int] = []
    var pendingCenters: (cls: [Float], patch: [Float]) = ([], [])

    /// `student` / `teacher`: Double parameters by key (teacher: encoder + head keys).
    public init(_ cfg: ModelConfig, precision: FastPrecision, student s: [String: Tensor<Double>],
                teacher t: [String: Tensor<Double>]?, centerCls cc: [Double]? = nil, centerPatch cp: [Double]? = nil) {
        self.cfg = cfg; self.prec = precision
        _ = KernelPerturbation.warnOnce
        k = Kernels(prec: precision, ws: ws)
        scaler = LossScaler(enabled: precision.isFP16)
        centerCls = (cc ?? Array(repeating: 0, count: cfg.headOutDim)).map { Float($0) }
        centerPatch = (cp ?? Array(repeating: 0, count: cfg.headOutDim)).map { Float($0) }
        monitor.minNormal = precision.halfMinNormal
        let ws = self.ws
        func load(_ name: String, _ v: Tensor<Double>) -> FT {
            let b = ws.get(name, v.shape)
            for i in 0..<v.count { b.p[i] = Float(v.data[i]) }
            if precision.isPure { precision.round(b.p, b.count) }
            return b
        }
        for spec in cfg.studentParameters {
            student[spec.key] = load("param." + spec.key, s[spec.key]!)
            if !spec.frozen {
                grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true)
                adamM[spec.key] = ws.get("adam.m." + spec.key, spec.shape, zero: true)
                adamV[spec.key] = ws.get("adam.v." + spec.key, spec.shape, zero: true)
            }
        }
        for spec in cfg.teacherParameters { teacher[spec.key] = load("teacher." + spec.key, (t ?? s)[spec.key]!) }
    }

    /// A model for forward and backward only (the headroom sweep): student, teacher and
    /// gradients in float32 and no AdamW moments, so XL/2 fits where a training model would
    /// not. Buffers start at zero; `load` fills them one tensor at a time (no Double copy of
    /// the model is ever held).
    public init(_ cfg: ModelConfig, precision: FastPrecision, forwardBackwardOnly: Void) {
        self.cfg = cfg; self.prec = precision
        _ = KernelPerturbation.warnOnce
        k = Kernels(prec: precision, ws: ws)
        scaler = LossScaler(enabled: precision.isFP16)
        centerCls = Array(repeating: 0, count: cfg.headOutDim)
        centerPatch = Array(repeating: 0, count: cfg.headOutDim)
        monitor.minNormal = precision.halfMinNormal
        hasOptimizer = false
        for spec in cfg.studentParameters {
            student[spec.key] = ws.get("param." + spec.key, spec.shape)
            if !spec.frozen { grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true) }
        }
        for spec in cfg.teacherParameters { teacher[spec.key] = ws.get("teacher." + spec.key, spec.shape) }
    }

    /// Sets one student (or teacher) tensor from Double values (rounded as the model stores it).
    public func load(_ key: String, teacher toTeacher: Bool = false, _ v: [Double]) {
        guard let b = (toTeacher ? teacher : student)[key], b.count == v.count else {
            fatalError("FastModel.load: no \(toTeacher ? "teacher" : "student") tensor '\(key)' of \(v.count) elements")
        }
        for i in 0..<v.count { b.p[i] = Float(v[i]) }
        if prec.isPure { prec.round(b.p, b.count) }
    }

    /// A model over an explicit parameter list and no teacher: the plain DiT of
    /// `oracle bench` (FastDiT.swift). Gradients and AdamW moments for the trainable specs.
    public init(_ cfg: ModelConfig, precision: FastPrecision, specs: [ParameterSpec], parameters s: [String: Tensor<Double>]) {
        self.cfg = cfg; self.prec = precision
        _ = KernelPerturbation.warnOnce
        k = Kernels(prec: precision, ws: ws)
        scaler = LossScaler(enabled: precision.isFP16)
        centerCls = []; centerPatch = []
        monitor.minNormal = precision.halfMinNormal
        for spec in specs {
            let v = s[spec.key]!, b = ws.get("param." + spec.key, v.shape)
            for i in 0..<v.count { b.p[i] = Float(v.data[i]) }
            if precision.isPure { precision.round(b.p, b.count) }
            student[spec.key] = b
            if !spec.frozen {
                grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true)
                adamM[spec.key] = ws.get("adam.m." + spec.key, spec.shape, zero: true)
                adamV[spec.key] = ws.get("adam.v." + spec.key, spec.shape, zero: true)
            }
        }
    }

    // MARK: recording and checking

    func out(_ name: String, _ op: String, _ t: FT, _ inputs: [(String, FT)]) throws {
        try monitor.check(name, op, t.p, t.shape, inputs: inputs.map { ($0.0, UnsafePointer($0.1.p), $0.1.count) })
    }
    func remember(_ name: String, _ t: FT) {
        if record { activations[name] = (t.shape, t.array()) }
    }

    // MARK: conditioning, encoder, decoder, head (forward)

    struct EncoderState { var patches: FT, tokens: FT, temb: FT, t1: FT, t1s: FT, c: FT, siluC: FT, h: [FT], keep: [[Int]] }

    /// c = MLP(freq(c_noise)) + table[y]; SiLU(c).
    func conditioning(_ pre: String, _ P: [String: FT], cNoise: [Double], labels: [Int]) throws -> (FT, FT, FT, FT, FT) {
        let N = labels.count, D = cfg.hiddenSize
        let temb = ws.get(pre + ".temb", [N, 256])
        for n in 0..<N { for j in 0..<128 {
            let f = Glibc.exp(-Glibc.log(10000.0) * Double(j) / 128), a = cNoise[n] * f
            temb.p[n * 256 + j] = Float(Glibc.cos(a)); temb.p[n * 256 + 128 + j] = Float(Glibc.sin(a))
        } }
        let t1 = ws.get(pre + ".t1", [N, D]), t1s = ws.get(pre + ".t1s", [N, D]), c = ws.get(pre + ".c", [N, D])
        k.linear(temb, P["t_embedder.mlp.0.weight"]!, P["t_embedder.mlp.0.bias"]!, t1)
        k.silu(t1, t1s)
        k.linear(t1s, P["t_embedder.mlp.2.weight"]!, P["t_embedder.mlp.2.bias"]!, c)
        let table = P["y_embedder.embedding_table.weight"]!
        for n in 0..<N { for i in 0..<D { c.p[n * D + i] += table.p[labels[n] * D + i] } }
        try out(pre + ".c", "c = t_embedder(c_noise) + y_embedder(y)", c, [(pre + ".t1", t1)])
        let siluC = ws.get(pre + ".siluC", [N, D])
        k.silu(c, siluC)
        return (temb, t1, t1s, c, siluC)
    }

    /// Encoder on xIn = c_in x (float32 [N, C, H, W] already written to `xIn`).
    func encoder(_ pre: String, _ P: [String: FT], xIn: FT, cNoise: [Double], labels: [Int], keep: [[Int]]) throws -> EncoderState {
        let N = labels.count, D = cfg.hiddenSize, Tn = cfg.tokens, p = cfg.patchSize, C = cfg.inChannels
        let H = cfg.inputSize, g = cfg.grid, Pd = cfg.patchDim, V = keep[0].count
        let patches = ws.get(pre + ".patches", [N, Tn, Pd])
        for n in 0..<N { for r in 0..<g { for cl in 0..<g { for c in 0..<C { for i in 0..<p { for j in 0..<p {
            patches.p[((n * g + r) * g + cl) * Pd + (c * p + i) * p + j] = xIn.p[((n * C + c) * H + r * p + i) * H + cl * p + j]
        } } } } } }
        let tokens = ws.get(pre + ".tokens", [N, Tn, D])
        let wx = FT(p: P["x_embedder.proj.weight"]!.p, shape: [D, Pd])
        patchKernels.linear(patches, wx, P["x_embedder.proj.bias"]!, tokens)
        let pos = P["pos_embed"]!
        for n in 0..<N { for i in 0..<(Tn * D) { tokens.p[n * Tn * D + i] += pos.p[D + i] } }
        try out(pre + ".tokens", "patch embed + pos_embed", tokens, [("x_in", xIn)])
        let (temb, t1, t1s, c, siluC) = try conditioning(pre, P, cNoise: cNoise, labels: labels)
        let h0 = ws.get(pre + ".enc.in", [N, 1 + V, D])
        let cls = P["cls_token"]!
        for n in 0..<N {
            for i in 0..<D { h0.p[n * (1 + V) * D + i] = cls.p[i] + pos.p[i] }
            for (v, t) in keep[n].enumerated() {
                (h0.p + (n * (1 + V) + 1 + v) * D).update(from: tokens.p + (n * Tn + t) * D, count: D)
            }
        }
        var hs = [h0]
        for i in 0..<cfg.depth {
            let y = try block("\(pre).enc.block.\(i)", "blocks.\(i).", P, hs[i], siluC, heads: cfg.numHeads)
            hs.append(y)
        }
        if pre == "student" { remember(ActivationName.tokens, tokens); remember(ActivationName.c, c) }
        for i in 0..<cfg.depth { remember("\(pre).enc.block.\(i)", hs[i + 1]) }
        return EncoderState(patches: patches, tokens: tokens, temb: temb, t1: t1, t1s: t1s, c: c, siluC: siluC, h: hs, keep: keep)
    }

    /// One adaLN-Zero block (SPEC §2.6); buffers under `name`, parameters under `key`.
    func block(_ name: String, _ key: String, _ P: [String: FT], _ x: FT, _ siluC: FT, heads: Int) throws -> FT {
        let N = x.shape[0], L = x.shape[1], W = x.last, hm = P[key + "mlp.fc1.weight"]!.shape[0]
        let mod = ws.get(name + ".mod", [N, 6 * W])
        k.linear(siluC, P[key + "adaLN_modulation.1.weight"]!, P[key + "adaLN_modulation.1.bias"]!, mod)
        try out(name + ".adaLN", "adaLN_modulation Linear(SiLU(c))", mod, [("SiLU(c)", siluC)])
        let eps = variant.layerNormEps(key)
        let m1 = ws.get(name + ".m1", [N, L, W]), mean1 = ws.get(name + ".mean1", [N * L]), rstd1 = ws.get(name + ".rstd1", [N * L])
        k.lnModulate(x, mod, shiftChunk: 0, scaleChunk: 1, chunks: 6, m1, mean: mean1, rstd: rstd1, eps: eps)
        try out(name + ".norm1", "modulate(LayerNorm(x), shift1, scale1)", m1, [("x", x)])
        let qkv = ws.get(name + ".qkv", [N, L, 3 * W])
        k.linear(m1, P[key + "attn.qkv.weight"]!, P[key + "attn.qkv.bias"]!, qkv)
        try out(name + ".attn.qkv", "attn.qkv Linear", qkv, [("norm1", m1)])
        let probs = ws.get(name + ".attn.probs", [N, heads, L, L])
        k.attentionLogits(qkv, heads: heads, probs)
        try out(name + ".attn.logits", "q k^T / sqrt(d) (matmul)", probs, [("q,k", qkv)])
        k.softmaxRows(probs)
        try out(name + ".attn.probs", "softmax (float32)", probs, [])
        let a = ws.get(name + ".attn.out", [N, L, W])
        k.attentionOutput(qkv, heads: heads, probs, a)
        try out(name + ".attn.out", "P v (matmul)", a, [("v", qkv)])
        let proj = ws.get(name + ".attn.proj", [N, L, W])
        k.linear(a, P[key + "attn.proj.weight"]!, P[key + "attn.proj.bias"]!, proj)
        try out(name + ".attn.proj", "attn.proj Linear", proj, [("attn.out", a)])
        let x1 = ws.get(name + ".x1", [N, L, W])
        k.gatedResidual(x, mod, chunk: 2, chunks: 6, proj, x1)
        try out(name + ".x1", "x + gate1 * attn", x1, [("x", x), ("attn.proj", proj)])
        let m2 = ws.get(name + ".m2", [N, L, W]), mean2 = ws.get(name + ".mean2", [N * L]), rstd2 = ws.get(name + ".rstd2", [N * L])
        k.lnModulate(x1, mod, shiftChunk: 3, scaleChunk: 4, chunks: 6, m2, mean: mean2, rstd: rstd2, eps: eps)
        try out(name + ".norm2", "modulate(LayerNorm(x1), shift2, scale2)", m2, [("x1", x1)])
        let f1 = ws.get(name + ".mlp.fc1", [N, L, hm]), gl = ws.get(name + ".mlp.gelu", [N, L, hm])
        k.linear(m2, P[key + "mlp.fc1.weight"]!, P[key + "mlp.fc1.bias"]!, f1)
        try out(name + ".mlp.fc1", "mlp.fc1 Linear", f1, [("norm2", m2)])
        if variant.exactGELU(key) { k.geluErf(f1, gl) } else { k.geluTanh(f1, gl) }
        try out(name + ".mlp.gelu", "GELU(tanh)", gl, [("mlp.fc1", f1)])
        let f2 = ws.get(name + ".mlp.fc2", [N, L, W])
        k.linear(gl, P[key + "mlp.fc2.weight"]!, P[key + "mlp.fc2.bias"]!, f2)
        try out(name + ".mlp.fc2", "mlp.fc2 Linear", f2, [("mlp.gelu", gl)])
        let y = ws.get(name, [N, L, W])
        k.gatedResidual(x1, mod, chunk: 5, chunks: 6, f2, y)
        try out(name, "x1 + gate2 * mlp", y, [("x1", x1), ("mlp.fc2", f2)])
        return y
    }

    struct DecoderState { var H: FT, mod0: FT, m0: FT, mean0: FT, rstd0: FT, z: [FT], modF: FT, mF: FT, meanF: FT, rstdF: FT, out: FT }

    func decoder(_ e: EncoderState, _ P: [String: FT]) throws -> DecoderState {
        let N = e.tokens.shape[0], Tn = cfg.tokens, D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize
        let V = e.keep[0].count, enc = e.h[cfg.depth]
        let H = ws.get("student.dec.in", [N, Tn, D])
        H.p.update(from: e.tokens.p, count: N * Tn * D)
        for n in 0..<N { for (v, t) in e.keep[n].enumerated() {
            (H.p + (n * Tn + t) * D).update(from: enc.p + (n * (1 + V) + 1 + v) * D, count: D)
        } }
        remember(ActivationName.decIn, H)
        let mod0 = ws.get("student.dec.layer.mod", [N, 2 * D])
        k.linear(e.siluC, P["decoder_layer.adaLN_modulation.1.weight"]!, P["decoder_layer.adaLN_modulation.1.bias"]!, mod0)
        let m0 = ws.get("student.dec.layer.norm", [N, Tn, D]), mean0 = ws.get("student.dec.layer.mean", [N * Tn]), rstd0 = ws.get("student.dec.layer.rstd", [N * Tn])
        k.lnModulate(H, mod0, shiftChunk: 0, scaleChunk: 1, chunks: 2, m0, mean: mean0, rstd: rstd0)
        let z0 = ws.get("student.dec.layer", [N, Tn, Dd])
        k.linear(m0, P["decoder_layer.linear.weight"]!, P["decoder_layer.linear.bias"]!, z0)
        let dpos = P["decoder_pos_embed"]!
        for n in 0..<N { for i in 0..<(Tn * Dd) { z0.p[n * Tn * Dd + i] += dpos.p[i] } }
        try out("student.dec.layer", "decoder_layer Linear + decoder_pos_embed", z0, [("student.dec.in", H)])
        var zs = [z0]
        for i in 0..<cfg.decoderDepth {
            zs.append(try block(ActivationName.decBlock(i), "decoder_blocks.\(i).", P, zs[i], e.siluC, heads: cfg.decoderNumHeads))
            remember(ActivationName.decBlock(i), zs[i + 1])
        }
        let modF = ws.get("student.final.mod", [N, 2 * Dd])
        k.linear(e.siluC, P["final_layer.adaLN_modulation.1.weight"]!, P["final_layer.adaLN_modulation.1.bias"]!, modF)
        let mF = ws.get("student.final.norm", [N, Tn, Dd]), meanF = ws.get("student.final.mean", [N * Tn]), rstdF = ws.get("student.final.rstd", [N * Tn])
        k.lnModulate(zs[cfg.decoderDepth], modF, shiftChunk: 0, scaleChunk: 1, chunks: 2, mF, mean: meanF, rstd: rstdF)
        let o = ws.get("student.final", [N, Tn, cfg.patchDim])
        k.linear(mF, P["final_layer.linear.weight"]!, P["final_layer.linear.bias"]!, o)
        try out("student.final", "final_layer Linear", o, [("final.norm", mF)])
        return DecoderState(H: H, mod0: mod0, m0: m0, mean0: mean0, rstd0: rstd0, z: zs, modF: modF, mF: mF, meanF: meanF, rstdF: rstdF, out: o)
    }

    /// [N, T, p p C] ordered (i, j, c) -> [N, C, H, W] (into `img`), or the reverse (`inverse`).
    func unpatchify(_ x: FT, _ img: FT, inverse: Bool = false) {
        let N = img.shape[0], C = cfg.inChannels, p = cfg.patchSize, g = cfg.grid, H = cfg.inputSize, Tn = cfg.tokens
        for n in 0..<N { for r in 0..<g { for cl in 0..<g { for i in 0..<p { for j in 0..<p { for c in 0..<C {
            let a = ((n * C + c) * H + r * p + i) * H + cl * p + j, b = ((n * Tn + r * g + cl) * p * p + i * p + j) * C + c
            if inverse { x.p[b] = img.p[a] } else { img.p[a] = x.p[b] }
        } } } } } }
    }

    struct HeadState { var x: FT, h1: FT, g1: FT, h2: FT, g2: FT, h3: FT, u: FT, norms: FT, w: FT, vnorm: FT, out: FT }

    /// DINO head over rows [R, D] -> [R, K].
    func head(_ pre: String, _ P: [String: FT], _ x: FT) throws -> HeadState {
        let R = x.rows, Hh = cfg.headHiddenDim, B = cfg.headBottleneckDim, K = cfg.headOutDim
        let h1 = ws.get(pre + ".head.h1", [R, Hh]), g1 = ws.get(pre + ".head.g1", [R, Hh])
        let h2 = ws.get(pre + ".head.h2", [R, Hh]), g2 = ws.get(pre + ".head.g2", [R, Hh])
        let h3 = ws.get(pre + ".head.h3", [R, B]), u = ws.get(pre + ".head.u", [R, B]), norms = ws.get(pre + ".head.norms", [R])
        k.linear(x, P["head.mlp.0.weight"]!, P["head.mlp.0.bias"]!, h1)
        try out(pre + ".head.mlp.0", "head Linear", h1, [("x", x)])
        k.geluErf(h1, g1)
        k.linear(g1, P["head.mlp.2.weight"]!, P["head.mlp.2.bias"]!, h2)
        try out(pre + ".head.mlp.2", "head Linear", h2, [("gelu", g1)])
        k.geluErf(h2, g2)
        k.linear(g2, P["head.mlp.4.weight"]!, P["head.mlp.4.bias"]!, h3)
        try out(pre + ".head.mlp.4", "head Linear", h3, [("gelu", g2)])
        for r in 0..<R {   // F.normalize, eps 1e-12, float32
            var s: Float = 0
            for i in 0..<B { s += h3.p[r * B + i] * h3.p[r * B + i] }
            let nrm = s.squareRoot(), d = max(nrm, 1e-12)
            norms.p[r] = nrm
            for i in 0..<B { u.p[r * B + i] = h3.p[r * B + i] / d }
        }
        try out(pre + ".head.normalized", "F.normalize", u, [("head.mlp.4", h3)])
        let v = P["head.last_layer.weight_v"]!, gg = P["head.last_layer.weight_g"]!
        let w = ws.get(pre + ".head.wn", [K, B]), vnorm = ws.get(pre + ".head.vnorm", [K])
        for kk in 0..<K {
            var s: Float = 0
            for i in 0..<B { s += v.p[kk * B + i] * v.p[kk * B + i] }
            vnorm.p[kk] = s.squareRoot()
            for i in 0..<B { w.p[kk * B + i] = gg.p[kk] * v.p[kk * B + i] / vnorm.p[kk] }
        }
        let o = ws.get(pre + ".head.out", [R, K])
        k.linear(u, w, nil, o)
        try out(pre + ".head.out", "weight-normalized last layer", o, [("normalized", u)])
        return HeadState(x: x, h1: h1, g1: g1, h2: h2, g2: g2, h3: h3, u: u, norms: norms, w: w, vnorm: vnorm, out: o)
    }
}

/// Deliberate deviations from SPEC that implementations get wrong, for building planted-bug
/// files with a known defect (tests of the calibrated verdicts). Encoder block i means the
/// student's and the teacher's `blocks.i` (the same code runs both).
public struct FastVariant: Sendable {
    /// Exact (erf) GELU instead of the tanh approximation in encoder block i's MLP.
    public var exactGELUBlock: Int? = nil
    /// LayerNorm eps `layerNormEps` instead of 1e-6 in encoder block i's two norms.
    public var layerNormEpsBlock: Int? = nil
    public var layerNormEps: Float = 1e-6
    /// The patch embedding (a Conv2d in PyTorch) with TF32 operands, forward and backward, in
    /// an otherwise float32 run: PyTorch's default on Ampere and later GPUs
    /// (`torch.backends.cudnn.allow_tf32 = True`).
    public var tf32PatchEmbedding = false
    public init(exactGELUBlock: Int? = nil, layerNormEpsBlock: Int? = nil, layerNormEps: Float = 1e-6, tf32PatchEmbedding: Bool = false) {
        self.exactGELUBlock = exactGELUBlock; self.layerNormEpsBlock = layerNormEpsBlock; self.layerNormEps = layerNormEps
        self.tf32PatchEmbedding = tf32PatchEmbedding
    }
    /// Whether the block with parameter prefix `key` ("blocks.i.") uses exact GELU.
    func exactGELU(_ key: String) -> Bool { exactGELUBlock.map { key == "blocks.\($0)." } ?? false }
    /// The LayerNorm eps of the block with parameter prefix `key` (SPEC's 1e-6 but in the planted block).
    func layerNormEps(_ key: String) -> Float { layerNormEpsBlock.map { key == "blocks.\($0)." } == true ? layerNormEps : 1e-6 }
}
