import Glibc
import SDDiTCore

/// The float32 / mixed-precision SD-DiT: the whole training step and the sampler of SPEC
/// §2-6 on OpenBLAS, a second implementation independent of the reference. It owns the
/// parameter tables (student, teacher, gradients), the layers bound to them (Layers/), the
/// optimizer (Step/FastAdamW.swift), the DINO centers and the loss scaler; the layers share
/// one `FastContext` (kernels, workspace, monitor, recording). The step is
/// Step/FastSDDiTStep.swift; the plain DiT of `oracle bench` is FastDiT.swift. EDM scalars,
/// loss sums and the sampler's x and sigmas are kept in Double (as EDM's code does).
public final class FastModel {
    public let cfg: ModelConfig
    public let prec: FastPrecision
    let ctx: FastContext
    public var scaler: LossScaler
    public var monitor: Monitor { ctx.monitor }
    public private(set) var student: TensorTable = [:]
    public private(set) var teacher: TensorTable = [:]
    public private(set) var grads: TensorTable = [:]
    /// The trainable keys in the config's parameter order (unscaling reports the first
    /// non-finite gradient in this order), fixed when the model is made.
    private(set) var trainableKeys: [String] = []
    /// AdamW's moments; nil for a forward-and-backward-only or inference model (it cannot step).
    let adam: FastAdamW?
    var centers: FastCenters
    /// Weight of the discriminative losses in the total, L = L_G + w (L_D^cls + L_D^patch):
    /// 1 is SPEC §4 (bit-identical to the unweighted sum); 0 is the paper's table-3 ablation
    /// "without discriminative loss" (the teacher still runs, so L_D is still reported).
    public var discriminativeWeight: Float = 1

    public var hasOptimizer: Bool { adam != nil }
    public var centerCls: [Float] { get { centers.cls } set { centers.cls = newValue } }
    public var centerPatch: [Float] { get { centers.patch } set { centers.patch = newValue } }
    /// Activations of the last step by SPEC name (filled when `record` is set).
    public var record: Bool { get { ctx.record } set { ctx.record = newValue } }
    public internal(set) var activations: [String: (shape: [Int], values: [Float])] {
        get { ctx.activations } set { ctx.activations = newValue }
    }
    /// Deliberate deviations from SPEC, for planted-bug files (tests); none by default.
    public var variant: FastVariant {
        get { ctx.variant }
        set {
            ctx.variant = newValue
            if newValue.weightGTrained { trainWeightG() }
        }
    }

    /// The divergence `weightGTrained`: weight_g gets a gradient buffer, moments and a place
    /// among the trainable keys.
    private func trainWeightG() {
        let key = ModelConfig.weightGKey, shape = [cfg.headOutDim, 1]
        if !trainableKeys.contains(key) { trainableKeys.append(key) }
        if !grads.isEmpty, grads[key] == nil {
            grads[key] = ctx.ws.get("grad." + key, shape, zero: true)
            adam?.addMoments(key, shape, ctx.ws)
            rebindStudentLayers()
        }
    }

    /// Whether `spec` has a gradient: the trainable parameters, and weight_g where trained.
    func hasGradient(_ spec: ParameterSpec) -> Bool { !spec.frozen || (variant.weightGTrained && spec.key == ModelConfig.weightGKey) }
    public var workspaceBytes: Int { ctx.ws.bytes }

    // MARK: making a model

    /// `student` / `teacher`: Double parameters by key (teacher: encoder + head keys).
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, student s: [String: Tensor<Double>],
                            teacher t: [String: Tensor<Double>]?, centerCls cc: [Double]? = nil, centerPatch cp: [Double]? = nil) {
        self.init(cfg, precision: precision, optimizer: true)
        centerCls = (cc ?? Array(repeating: 0, count: cfg.headOutDim)).map { Float($0) }
        centerPatch = (cp ?? Array(repeating: 0, count: cfg.headOutDim)).map { Float($0) }
        allocate(student: cfg.studentParameters, gradients: true, teacher: true, from: s, teacher: t ?? s)
    }

    /// A model for forward and backward only (the headroom sweep): student, teacher and
    /// gradients in float32 and no AdamW moments, so XL/2 fits where a training model would
    /// not. Buffers start at zero; `load` fills them one tensor at a time (no Double copy of
    /// the model is ever held).
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, forwardBackwardOnly: Void) {
        self.init(cfg, precision: precision, optimizer: false)
        allocate(student: cfg.studentParameters, gradients: true, teacher: true, from: nil, teacher: nil)
    }

    /// A model for the sampler only: the student in float32, no teacher, gradients or AdamW
    /// moments. Buffers start at zero; `load` fills them one tensor at a time.
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, inferenceOnly: Void) {
        self.init(cfg, precision: precision, optimizer: false)
        allocate(student: cfg.studentParameters, gradients: false, teacher: false, from: nil, teacher: nil)
    }

    /// A model over an explicit parameter list and no teacher: the plain DiT of
    /// `oracle bench` (FastDiT.swift). Gradients and AdamW moments for the trainable specs.
    public convenience init(_ cfg: ModelConfig, precision: FastPrecision, specs: [ParameterSpec], parameters s: [String: Tensor<Double>]) {
        self.init(cfg, precision: precision, optimizer: true)
        centerCls = []; centerPatch = []
        allocate(student: specs, gradients: true, teacher: false, from: s, teacher: nil)
    }

    /// Empty tables; `allocate` fills them.
    private init(_ cfg: ModelConfig, precision: FastPrecision, optimizer: Bool) {
        self.cfg = cfg; self.prec = precision
        ctx = FastContext(cfg, precision)
        scaler = LossScaler(enabled: precision.isFP16)
        adam = optimizer ? FastAdamW(cfg) : nil
        centers = FastCenters(cls: Array(repeating: 0, count: cfg.headOutDim), patch: Array(repeating: 0, count: cfg.headOutDim))
    }

    /// Buffers for `specs` (and their gradients and moments when trainable) and, with
    /// `teacher`, the teacher's; filled from Double values where given (zero otherwise).
    private func allocate(student specs: [ParameterSpec], gradients: Bool, teacher withTeacher: Bool,
                          from s: [String: Tensor<Double>]?, teacher t: [String: Tensor<Double>]?) {
        let ws = ctx.ws
        for spec in specs {
            let b = ws.get("param." + spec.key, spec.shape)
            student[spec.key] = b
            if let v = s?[spec.key] { fill(b, v.data) }
            if !spec.frozen { trainableKeys.append(spec.key) }
            if gradients && !spec.frozen {
                grads[spec.key] = ws.get("grad." + spec.key, spec.shape, zero: true)
                adam?.addMoments(spec.key, spec.shape, ws)
            }
        }
        if withTeacher {
            for spec in cfg.teacherParameters {
                let b = ws.get("teacher." + spec.key, spec.shape)
                teacher[spec.key] = b
                if let v = t?[spec.key] { fill(b, v.data) }
            }
        }
    }

    /// b <- v rounded as the model stores it (float32; the half type in pure modes).
    private func fill(_ b: FT, _ v: [Double]) {
        for i in 0..<v.count { b.p[i] = Float(v[i]) }
        if prec.isPure { prec.round(b.p, b.count) }
    }

    /// Sets one student (or teacher) tensor from Double values (rounded as the model stores it).
    public func load(_ key: String, teacher toTeacher: Bool = false, _ v: [Double]) throws {
        guard let b = (toTeacher ? teacher : student)[key], b.count == v.count else {
            throw ConfigError("fast path: no \(toTeacher ? "teacher" : "student") tensor '\(key)' of \(v.count) elements to load")
        }
        fill(b, v)
    }

    // MARK: the network by layer (Layers/), each bound to the tables it reads

    private var layers: (studentEncoder: FastEncoder?, teacherEncoder: FastEncoder?, decoder: FastDecoder?,
                         studentHead: FastProjectionHead?, teacherHead: FastProjectionHead?, plainDiT: FastPlainDiT?)
        = (nil, nil, nil, nil, nil, nil)

    /// The student's gradients for its layers: none while a streamed step holds none.
    private var studentGradients: TensorTable? { grads.isEmpty ? nil : grads }

    /// `layer` bound to the student (with its gradients) or the teacher.
    private func bound<L: FastParameterized>(_ layer: L, teacher: Bool = false) -> L {
        layer.bind(teacher ? self.teacher : student, gradients: teacher ? nil : studentGradients)
        return layer
    }
    var studentEncoder: FastEncoder {
        if let l = layers.studentEncoder { return l }
        let l = bound(FastEncoder(branch: ActivationName.student, cfg)); layers.studentEncoder = l; return l
    }
    var teacherEncoder: FastEncoder {
        if let l = layers.teacherEncoder { return l }
        let l = bound(FastEncoder(branch: ActivationName.teacher, cfg), teacher: true); layers.teacherEncoder = l; return l
    }
    var decoder: FastDecoder {
        if let l = layers.decoder { return l }
        let l = bound(FastDecoder(cfg)); layers.decoder = l; return l
    }
    var studentHead: FastProjectionHead {
        if let l = layers.studentHead { return l }
        let l = bound(FastProjectionHead(branch: ActivationName.student)); layers.studentHead = l; return l
    }
    var teacherHead: FastProjectionHead {
        if let l = layers.teacherHead { return l }
        let l = bound(FastProjectionHead(branch: ActivationName.teacher), teacher: true); layers.teacherHead = l; return l
    }
    var plainDiTNetwork: FastPlainDiT {
        if let l = layers.plainDiT { return l }
        let l = bound(FastPlainDiT(cfg)); layers.plainDiT = l; return l
    }

    /// Binds the student's layers again after the gradient table changed.
    private func rebindStudentLayers() {
        for l in [layers.studentEncoder, layers.decoder, layers.studentHead, layers.plainDiT] as [FastParameterized?] {
            l?.bind(student, gradients: studentGradients)
        }
    }

    // MARK: the streamed step's memory plan

    /// The streamed step's memory plan (`FastBackend.stream`, a model made `inferenceOnly`):
    /// set, each forward loads the teacher from it (Double values by key) after dropping the
    /// gradients, and once the teacher's head has run the teacher and its workspace are
    /// released and the gradients allocated (zero). The student, the teacher and the
    /// gradients are never all held at once; the numbers are the same.
    var streamedTeacher: ((String) -> [Double])? = nil {
        didSet { ctx.streamed = streamedTeacher != nil }
    }

    func loadStreamedTeacher() throws {
        guard let source = streamedTeacher else { return }
        grads = [:]
        rebindStudentLayers()
        ctx.ws.release { $0.hasPrefix("grad.") }
        for spec in cfg.teacherParameters {
            teacher[spec.key] = ctx.ws.get("teacher." + spec.key, spec.shape)
            try load(spec.key, teacher: true, source(spec.key))
        }
        layers.teacherEncoder = nil; layers.teacherHead = nil   // bound again to the new tensors on first use
    }

    func releaseStreamedTeacher() {
        guard streamedTeacher != nil else { return }
        teacher = [:]
        layers.teacherEncoder = nil; layers.teacherHead = nil
        ctx.ws.release { $0.hasPrefix(ActivationName.teacher + ".") }
        for spec in cfg.studentParameters where hasGradient(spec) { grads[spec.key] = ctx.ws.get("grad." + spec.key, spec.shape, zero: true) }
        rebindStudentLayers()
    }

    /// The streamed step's teacher tensor `key` after the EMA: loaded from `streamedTeacher`
    /// (rounded as `load` rounds it), blended with the (updated) student, held by no one else.
    func streamedTeacherAfterEMA(_ key: String, _ beta: Float, studentBefore: [Float]? = nil) throws -> FT {
        guard let source = streamedTeacher, let spec = cfg.teacherParameters.first(where: { $0.key == key }) else {
            throw ConfigError("fast path: no streamed teacher tensor '\(key)'")
        }
        let b = ctx.ws.get("teacher." + key, spec.shape)
        teacher[key] = b
        defer { teacher[key] = nil; ctx.ws.release { $0 == "teacher." + key } }
        try load(key, teacher: true, source(key))
        var s = student.tensor(key)
        if let sb = studentBefore {
            s = ctx.ws.get("student.before." + key, spec.shape)
            s.copy(from: sb)
        }
        defer { ctx.ws.release { $0 == "student.before." + key } }
        FastEMA.blend(ctx, teacher: b, student: s, beta: beta)
        return b
    }

    // MARK: the SD-DiT network F and the sampler's denoiser

    /// The SD-DiT network F (SPEC §2): student encoder over the `keep` tokens, decoder,
    /// unpatchify -> F [N, C, H, W].
    func sdditNetwork(_ xIn: FT, cNoise: [Double], labels: [Int], keep: [[Int]]) throws -> FT {
        let encoder = studentEncoder
        _ = try encoder.forward(ctx, xIn: xIn, cNoise: cNoise, labels: labels, keep: keep)
        let o = try decoder.forward(ctx, encoder)
        let F = ctx.ws.get(ActivationName.F, xIn.shape)
        FastUnpatchify.forward(cfg, o, F, cij: variant.unpatchifyCIJ)
        return F
    }

    /// D(x; sigma, y) with every token visible; x, sigma and D in Double (EDM keeps the
    /// sampler's state in float64), the network in float32 / the chosen mode.
    public func denoise(_ x: [Double], sigma: Double, labels: [Int]) throws -> [Double] {
        try denoise(x, sigmas: Array(repeating: sigma, count: labels.count), labels: labels)
    }

    /// D(x; sigma_n, y) for every sample at its own sigma, every token visible (the sampler's
    /// denoiser, SPEC §2.10); x and D in Double, the network in this model's precision.
    public func denoise(_ x: [Double], sigmas: [Double], labels: [Int]) throws -> [Double] {
        try validateDenoise(x, sigmas: sigmas, labels: labels)
        let N = labels.count, Hs = cfg.inputSize
        let e = sigmas.map { EDMCoefficients<Double>(sigma: $0, sigmaData: cfg.sigmaData) }
        let saved = record; record = false; defer { record = saved }
        let all = Array(repeating: Array(0..<cfg.tokens), count: N)
        return try FastEDMPrecond.forward(ctx, x, e, xIn: ctx.ws.get("student.x_in", [N, cfg.inChannels, Hs, Hs])) { xIn, cNoise in
            try sdditNetwork(xIn, cNoise: cNoise, labels: labels, keep: all)
        }.D
    }

    /// The Heun sampler (SPEC §6) with optional guidance; returns x after every step.
    public func sample(xInit: [Double], labels: [Int], sigmas: [Double], cfgScale: Double?) throws -> [[Double]] {
        try validateSample(xInit: xInit, labels: labels, sigmas: sigmas)
        // Core's Heun integrator and guidance (SPEC §6) over this model's denoiser
        let N = labels.count, shape = [xInit.count]
        func Dw(_ x: Tensor<Double>, _ s: Double) throws -> Tensor<Double> {
            let d = try denoise(x.data, sigma: s, labels: labels)
            guard let w = cfgScale else { return Tensor(shape: shape, data: d) }
            let d0 = try denoise(x.data, sigma: s, labels: Array(repeating: cfg.numClasses, count: N))
            return Tensor(shape: shape, data: (0..<d.count).map { HeunSampler.guided(conditional: d[$0], unconditional: d0[$0], scale: w) })
        }
        return try HeunSampler.sample(xInit: Tensor(shape: shape, data: xInit), sigmas: sigmas, denoise: Dw).map(\.data)
    }

    // MARK: reading the model

    /// Current parameters as Double tensors (student or teacher).
    public func parameters(teacher useTeacher: Bool = false) -> [String: Tensor<Double>] {
        (useTeacher ? teacher : student).mapValues { Tensor(shape: $0.shape, data: $0.array().map { Double($0) }) }
    }
    /// The trainable student tensors' values (to measure a step's update against).
    public func trainableSnapshot() -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for key in grads.keys { out[key] = student.tensor(key).array() }
        return out
    }

    /// The trainable student tensor `key` (nil for a fixed one).
    public func trainable(_ key: String) -> UnsafeBufferPointer<Float>? {
        guard grads[key] != nil, let t = student[key] else { return nil }
        return UnsafeBufferPointer(start: t.p, count: t.count)
    }

    /// Records each parameter gradient times `scale` (as a GradScaler run stores it) in the
    /// monitor's headroom statistics as "grad KEY".
    public func recordGradientHeadroom(scale: Float) {
        for spec in cfg.studentParameters { if let g = grads[spec.key] { monitor.record(ActivationName.gradientHeadroom(spec.key), g.p, g.count, scale: scale) } }
    }
    public func gradients() -> [String: Tensor<Double>] {
        grads.mapValues { Tensor(shape: $0.shape, data: $0.array().map { Double($0) }) }
    }
}
