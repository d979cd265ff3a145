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

    // The network by layer (Layers/), each holding its forward's buffers for the backward;
    // made on first use (a plain-DiT model never makes the SD-DiT ones).
    lazy var studentEncoder = FastEncoder(branch: ActivationName.student, cfg)
    lazy var teacherEncoder = FastEncoder(branch: ActivationName.teacher, cfg)
    lazy var decoder = FastDecoder(cfg)
    lazy var studentHead = FastProjectionHead(branch: ActivationName.student)
    lazy var teacherHead = FastProjectionHead(branch: ActivationName.teacher)
    lazy var plainDiTNetwork = FastPlainDiT(cfg)
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

    /// A model with no buffers and no optimizer: the two below fill it.
    init(_ cfg: ModelConfig, precision: FastPrecision, bare: Void) {
        self.cfg = cfg; self.prec = precision
        _ = KernelPerturbation.warnOnce
        k = Kernels(prec: precision, ws: ws)
        scaler = LossScaler(enabled: precision.isFP16)
        centerCls = Array(repeating: 0, count: cfg.headOutDim)
        centerPatch = Array(repeating: 0, count: cfg.headOutDim)
        monitor.minNormal = precision.halfMinNormal
        hasOptimizer = false
    }

    /// A model for forward and backward only (the headroom sweep): student, teacher and
    /// gradients in float32 and no AdamW moments, so XL/2 fits where a training model would
    /// not. Buffers start at zero; `load` fills them one tensor at a time (no Double copy of
    /// the model is ever held).
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, forwardBackwardOnly: Void) {
        self.init(cfg, precision: precision, bare: ())
        for spec in cfg.studentParameters {
            student[spec.key] = ws.get("param." + spec.key, spec.shape)
            if !spec.frozen { grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true) }
        }
        for spec in cfg.teacherParameters { teacher[spec.key] = ws.get("teacher." + spec.key, spec.shape) }
    }

    /// A model for the sampler only: the student in float32, no teacher, gradients or AdamW
    /// moments. Buffers start at zero; `load` fills them one tensor at a time.
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, inferenceOnly: Void) {
        self.init(cfg, precision: precision, bare: ())
        for spec in cfg.studentParameters { student[spec.key] = ws.get("param." + spec.key, spec.shape) }
    }

    /// The streamed step's memory plan (`FastBackend.stream`, a model made `inferenceOnly`):
    /// set, each forward loads the teacher from it (Double values by key) after dropping the
    /// gradients, and once the teacher's head has run the teacher and its workspace are
    /// released and the gradients allocated (zero). The student, the teacher and the
    /// gradients are never all held at once; the numbers are the same.
    var streamedTeacher: ((String) -> [Double])? = nil

    func loadStreamedTeacher() throws {
        guard let source = streamedTeacher else { return }
        grads = [:]
        ws.release { $0.hasPrefix("grad.") }
        for spec in cfg.teacherParameters {
            teacher[spec.key] = ws.get("teacher." + spec.key, spec.shape)
            try load(spec.key, teacher: true, source(spec.key))
        }
    }

    func releaseStreamedTeacher() {
        guard streamedTeacher != nil else { return }
        teacher = [:]
        teacherEncoder = FastEncoder(branch: ActivationName.teacher, cfg)
        teacherHead = FastProjectionHead(branch: ActivationName.teacher)
        ws.release { $0.hasPrefix(ActivationName.teacher + ".") }
        for spec in cfg.studentParameters where !spec.frozen { grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true) }
    }

    /// The streamed step's teacher tensor `key` after the EMA: loaded from `streamedTeacher`
    /// (rounded as `load` rounds it), blended with the (updated) student, held by no one else.
    func streamedTeacherAfterEMA(_ key: String, _ beta: Float) throws -> FT {
        guard let source = streamedTeacher, let spec = cfg.teacherParameters.first(where: { $0.key == key }) else {
            throw ConfigError("fast path: no streamed teacher tensor '\(key)'")
        }
        let b = ws.get("teacher." + key, spec.shape)
        teacher[key] = b
        defer { teacher[key] = nil; ws.release { $0 == "teacher." + key } }
        try load(key, teacher: true, source(key))
        ema(key, beta)
        return b
    }

    /// Sets one student (or teacher) tensor from Double values (rounded as the model stores it).
    public func load(_ key: String, teacher toTeacher: Bool = false, _ v: [Double]) throws {
        guard let b = (toTeacher ? teacher : student)[key], b.count == v.count else {
            throw ConfigError("fast path: no \(toTeacher ? "teacher" : "student") tensor '\(key)' of \(v.count) elements to load")
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

    func gradOut(_ name: String, _ op: String, _ t: FT, inputs: [(String, FT)] = []) throws {
        try out(ActivationName.gradient(name), op + " (backward)", t, inputs)
    }

    // MARK: the network

    /// The timestep embedder's frequency embedding (SPEC §2.3, Core's `TimestepFrequency`, in
    /// Double) into temb [N, 256], rounded to float32.
    func timestepEmbedding(_ cNoise: [Double], _ temb: FT) {
        let t: Tensor<Double> = TimestepFrequency.forward(cNoise)
        for i in 0..<t.count { temb.p[i] = Float(t.data[i]) }
    }

    /// EDM's preconditioning (SPEC §3, EDM's EDMPrecond) around a network F: x_in = c_in x
    /// (float32, rounded in pure modes, written to `xIn`), F = network(x_in, c_noise) as an
    /// image [N, C, H, W], D = c_skip x + c_out F in Double (x and D in float64, as EDM keeps them).
    func edmPrecond(_ x: [Double], _ e: [EDMCoefficients<Double>], xIn: FT,
                    network: (FT, [Double]) throws -> FT) rethrows -> (F: FT, D: [Double]) {
        let N = e.count, per = x.count / N
        for n in 0..<N { for i in 0..<per { xIn.p[n * per + i] = Float(e[n].cIn * x[n * per + i]) } }
        if prec.isPure { prec.round(xIn.p, xIn.count) }
        let F = try network(xIn, e.map(\.cNoise))
        var D = [Double](repeating: 0, count: N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            D[j] = e[n].denoised(x: x[j], F: Double(F.p[j]))
        } }
        return (F, D)
    }

    /// The SD-DiT network F (SPEC §2): student encoder over the `keep` tokens, decoder,
    /// unpatchify -> F [N, C, H, W].
    func sdditNetwork(_ xIn: FT, cNoise: [Double], labels: [Int], keep: [[Int]]) throws -> FT {
        _ = try studentEncoder.forward(self, student, xIn: xIn, cNoise: cNoise, labels: labels, keep: keep)
        let o = try decoder.forward(self, student, studentEncoder)
        let F = ws.get(ActivationName.F, xIn.shape)
        unpatchify(o, F)
        return F
    }

    /// [N, T, p p C] ordered (i, j, c) -> [N, C, H, W] (into `img`), or the reverse (`inverse`):
    /// Core's `PatchLayout.unpatchify` (SPEC §2.9).
    func unpatchify(_ x: FT, _ img: FT, inverse: Bool = false) {
        let xp = x.p, ip = img.p
        PatchLayout.unpatchify(N: img.shape[0], C: cfg.inChannels, H: cfg.inputSize, p: cfg.patchSize) { a, b in
            if inverse { xp[b] = ip[a] } else { ip[a] = xp[b] }
        }
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
    /// Attention logits q k^T without the 1/sqrt(head_dim) in encoder block i (forward and backward).
    public var unscaledAttentionBlock: Int? = nil
    /// modulate(x, scale, shift) for modulate(x, shift, scale) in encoder block i's two norms.
    public var shiftScaleSwapBlock: Int? = nil
    /// The DINO temperatures swapped: tau_S for the teacher, tau_T for the student.
    public var swapTemperatures = false
    public init(exactGELUBlock: Int? = nil, layerNormEpsBlock: Int? = nil, layerNormEps: Float = 1e-6, tf32PatchEmbedding: Bool = false,
                unscaledAttentionBlock: Int? = nil, shiftScaleSwapBlock: Int? = nil, swapTemperatures: Bool = false) {
        self.exactGELUBlock = exactGELUBlock; self.layerNormEpsBlock = layerNormEpsBlock; self.layerNormEps = layerNormEps
        self.tf32PatchEmbedding = tf32PatchEmbedding
        self.unscaledAttentionBlock = unscaledAttentionBlock; self.shiftScaleSwapBlock = shiftScaleSwapBlock
        self.swapTemperatures = swapTemperatures
    }
    /// Parses a planted bug as `oracle dump --plant` names it: gelu-exact:B, ln-eps:B[:EPS],
    /// no-sqrt-d:B, shift-scale:B, tau-swap, tf32-conv (B an encoder block).
    public init(planted s: String) throws {
        self.init()
        let parts = s.split(separator: ":").map(String.init)
        func block() throws -> Int {
            guard parts.count >= 2, let b = Int(parts[1]), b >= 0 else { throw ConfigError("--plant \(s): expected \(parts[0]):BLOCK") }
            return b
        }
        switch parts.first ?? "" {
        case "gelu-exact", "exact-gelu": exactGELUBlock = try block()
        case "ln-eps", "layernorm-eps":
            layerNormEpsBlock = try block()
            layerNormEps = parts.count > 2 ? (Float(parts[2]) ?? .nan) : 1e-5
            guard layerNormEps.isFinite, layerNormEps > 0 else { throw ConfigError("--plant \(s): eps must be a positive number") }
        case "no-sqrt-d": unscaledAttentionBlock = try block()
        case "shift-scale": shiftScaleSwapBlock = try block()
        case "tau-swap": swapTemperatures = true
        case "tf32-conv": tf32PatchEmbedding = true
        default: throw ConfigError("--plant \(s): unknown; expected gelu-exact:B, ln-eps:B[:EPS], no-sqrt-d:B, shift-scale:B, tau-swap or tf32-conv")
        }
    }
    func unscaledAttention(_ key: String) -> Bool { unscaledAttentionBlock.map { key == "blocks.\($0)." } ?? false }
    func swapsShiftScale(_ key: String) -> Bool { shiftScaleSwapBlock.map { key == "blocks.\($0)." } ?? false }
    /// Whether the block with parameter prefix `key` ("blocks.i.") uses exact GELU.
    func exactGELU(_ key: String) -> Bool { exactGELUBlock.map { key == "blocks.\($0)." } ?? false }
    /// The LayerNorm eps of the block with parameter prefix `key` (SPEC's 1e-6 but in the planted block).
    func layerNormEps(_ key: String) -> Float { layerNormEpsBlock.map { key == "blocks.\($0)." } == true ? layerNormEps : 1e-6 }
}
