import Glibc
import COpenBLAS
import SDDiTCore

/// `FastBackend.run`'s results one at a time from a model that holds float32 only: the
/// student, teacher and gradients (no AdamW moments: a setup's step is AdamW's first, from
/// zero moments, applied one tensor at a time), loaded one tensor at a time from the setup's
/// Double tensors, and no Double copy of any result beyond the one being handed over. The
/// numbers are `FastBackend.run`'s bit for bit in every precision mode (test): the same
/// forward, backward and GradScaler retries (`forwardBackwardFindingScale`), and per element
/// the same AdamW, EMA and center arithmetic.
extension FastBackend {
    /// Hands over every result of `run(s, precision:, variant:)` in `DatasetOrder` (the fixed
    /// tables, activations, losses, gradients, after-step student, teacher and centers, the
    /// sampler), each as soon as it is final; the training model is released before the
    /// sampler's (student only) is made.
    public static func stream(_ s: Setup, precision: FastPrecision, variant: FastVariant = FastVariant(),
                              emit: (String, NamedTensor) throws -> Void) throws {
        let cfg = s.config, label = precision.label
        func nt(_ shape: [Int], _ v: [Float]) -> NamedTensor { NamedTensor(shape: shape, values: v.map { Double($0) }, precision: label) }
        try emit("params/pos_embed", nt([1, 1 + cfg.tokens, cfg.hiddenSize], sinCos(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true)))
        try emit("params/decoder_pos_embed", nt([1, cfg.tokens, cfg.decoderHiddenSize], sinCos(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false)))
        if let I = s.inputs {
            try streamStep(s, I, precision: precision, variant: variant, emit: emit)
            malloc_trim(0)   // the model's memory back to the system before what runs next
        }
        if let sm = s.sampler {
            let m = FastModel(cfg, precision: precision, inferenceOnly: ())
            for spec in cfg.studentParameters { try m.load(spec.key, try s.studentTensor(spec.key)) }
            m.variant = variant
            let sig = HeunSampler.sigmas(steps: sm.steps, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
            let traj = try m.sample(xInit: sm.xInit.data, labels: sm.labels, sigmas: sig, cfgScale: sm.cfgScale)
            // the sampler keeps x and sigmas in float64; the network ran in `precision`
            try emit("sampler/sigmas", NamedTensor(shape: [sig.count], values: sig, precision: .float64))
            for (i, x) in traj.enumerated() { try emit("sampler/x.\(i)", NamedTensor(shape: sm.xInit.shape, values: x, precision: label)) }
            if let last = traj.last { try emit("sampler/out", NamedTensor(shape: sm.xInit.shape, values: last, precision: label)) }
        }
    }

    /// The training step of `stream`: its model lives only while this runs.
    static func streamStep(_ s: Setup, _ I: FastStepInputs, precision: FastPrecision, variant: FastVariant,
                           emit: (String, NamedTensor) throws -> Void) throws {
        let cfg = s.config, label = precision.label
        func named(_ t: FT) -> NamedTensor {
            NamedTensor(shape: t.shape, values: UnsafeBufferPointer(start: t.p, count: t.count).map { Double($0) }, precision: label)
        }
        let m = FastModel(cfg, precision: precision, inferenceOnly: ())
        for spec in cfg.studentParameters { try m.load(spec.key, try s.studentTensor(spec.key)) }
        for spec in cfg.teacherParameters { _ = try s.teacherTensor(spec.key) }   // every key present before the step
        m.streamedTeacher = { (try? s.teacherTensor($0)) ?? [] }
        if let cc = s.centerCls { m.centerCls = cc.map { Float($0) } }
        if let cp = s.centerPatch { m.centerPatch = cp.map { Float($0) } }
        m.variant = variant
        m.record = true
        let r = try m.forwardBackwardFindingScale(I)
        for p in DatasetOrder.sorted(m.activations.keys.map { "activations/" + $0 }, cfg) {
            let k = String(p.dropFirst(12))
            guard let v = m.activations.removeValue(forKey: k) else { continue }
            try emit(p, NamedTensor(shape: v.shape, values: v.values.map { Double($0) }, precision: label))
        }
        for p in DatasetOrder.sorted(r.losses.keys.map { "losses/" + $0 }, cfg) {
            try emit(p, NamedTensor(shape: [], values: [r.losses[String(p.dropFirst(7)), default: .nan]], precision: label))
        }
        for p in DatasetOrder.sorted(m.grads.keys.map { "grads/" + $0 }, cfg) { try emit(p, named(m.grads.tensor(String(p.dropFirst(6))))) }
        // AdamW's first step (unless GradScaler skipped it), then the EMA, one tensor at a time
        let adam = FastAdamW(cfg)
        // a divergence: the EMA from the student before the step
        var before: [String: [Float]] = [:]
        if variant.emaBeforeStep { for spec in cfg.teacherParameters { before[spec.key] = m.student.tensor(spec.key).array() } }
        for p in DatasetOrder.sorted(m.student.keys.map { "after_step/params/" + $0 }, cfg) {
            let key = String(p.dropFirst(18)), param = m.student.tensor(key)
            if !r.skipped, variant.trains(key), let g = m.grads[key] { adam.apply(m.ctx, param, g, step: 1, moments: nil) }
            try emit(p, named(param))
        }
        let beta = Float(cfg.emaBeta)
        for p in DatasetOrder.sorted(cfg.teacherParameters.map { "after_step/teacher/" + $0.key }, cfg) {
            let key = String(p.dropFirst(19))
            try emit(p, named(try m.streamedTeacherAfterEMA(key, beta, studentBefore: before[key])))
        }
        m.centers.update(momentum: cfg.centerMomentum)
        try emit("after_step/center_cls", NamedTensor(shape: [cfg.headOutDim], values: m.centerCls.map { Double($0) }, precision: label))
        try emit("after_step/center_patch", NamedTensor(shape: [cfg.headOutDim], values: m.centerPatch.map { Double($0) }, precision: label))
    }
}

// MARK: - Memory (checked before anything is allocated)

extension FastBackend {
    /// Bytes of `stream`'s run at batch N with V visible tokens in `precision`, roughly,
    /// beyond the Double setup its caller holds. Two phases, the larger counts: up to the
    /// teacher's head, the student and teacher in float32, the student's forward buffers
    /// (every block keeps its own) and the teacher's (over all tokens; each block's output,
    /// one block's buffers at a time: it has no backward); then the student and its
    /// gradients in float32, the student's forward buffers and one block's backward buffers
    /// (the teacher's are released, and each block's once its backward is done). Both with
    /// the recorded activations in float32, a few Double tensors of the largest result while
    /// it is handed over, and in half modes rounded operand copies of the largest matmul. An
    /// fp16 step that retries at a lower loss scale keeps the student's backward buffers
    /// outside the blocks through the teacher's forward: its first phase counts them. The
    /// sampler's model (student only, no backward) is smaller.
    public static func estimatedStreamBytes(_ cfg: ModelConfig, batch N: Int, visible V: Int, precision: FastPrecision) -> Double {
        let c = cfg.parameterCounts, n = Double(N)
        let total = Double(c.total), teacher = Double(c.encoder + c.head)
        let trainable = Double(cfg.studentParameters.filter { !$0.frozen }.map(\.count).reduce(0, +))
        let D = Double(cfg.hiddenSize), Dd = Double(cfg.decoderHiddenSize), T = Double(cfg.tokens), v = Double(V)
        let Pd = Double(cfg.patchDim), img = Double(cfg.inChannels * cfg.inputSize * cfg.inputSize)
        let Hh = Double(cfg.headHiddenDim), B = Double(cfg.headBottleneckDim), K = Double(cfg.headOutDim)
        func forward(_ W: Double, _ M: Double, _ H: Double, _ L: Double) -> Double { L * (12 * W + 2 * M) + H * L * L + 4 * L + 6 * W }
        func backward(_ W: Double, _ M: Double, _ L: Double) -> Double { L * (10 * W + 2 * M) + 6 * W }
        let M = Double(cfg.mlpHidden), Md = Double(cfg.decoderMlpHidden), H = Double(cfg.numHeads), Hd = Double(cfg.decoderNumHeads)
        let head = (1 + v) * (6 * Hh + 4 * B + 3 * K + D)
        let studentForward = n * (Double(cfg.depth) * forward(D, M, H, 1 + v) + Double(cfg.decoderDepth) * forward(Dd, Md, Hd, T)
                                  + T * (Pd + D) + (1 + v) * D + 4 * T * Dd + 2 * T * Pd + head / 2 + 4 * img)
        let studentBackward = n * (Double(cfg.depth) * backward(D, M, 1 + v) + Double(cfg.decoderDepth) * backward(Dd, Md, T)
                                   + T * D + (1 + v) * D + 4 * T * Dd + T * Pd + head / 2 + 4 * img)
        // the teacher keeps each block's output and one block's buffers at a time
        let teacherForward = n * (Double(cfg.depth) * (1 + T) * D + forward(D, M, H, 1 + T) + T * (Pd + D) + (2 + T + v) * D + head / 2)
        let largestParameter = Double(cfg.studentParameters.map(\.count).max() ?? 0)
        let scratch = precision == .fp32 ? 0 : 3 * n * (1 + T) * max(M, Md, 3 * D) + largestParameter
        let recorded = recordedValues(cfg, batch: N, visible: V)
        // each block's buffers are released once its backward is done: one block's backward at a time
        let blocksBackward = n * (Double(cfg.depth) * backward(D, M, 1 + v) + Double(cfg.decoderDepth) * backward(Dd, Md, T))
        let otherBackward = studentBackward - blocksBackward, blockBackward = n * max(backward(D, M, 1 + v), backward(Dd, Md, T))
        let retries = precision.isFP16 ? otherBackward : 0
        let first = total + teacher + studentForward + retries + teacherForward
        let second = total + trainable + studentForward + otherBackward + blockBackward
        let largestResult = max(largestParameter, n * (1 + T) * D, n * T * Dd)
        return 4 * (max(first, second) + scratch + recorded) + 24 * largestResult
    }

    /// Values of the activations a training step records (SPEC §7 /activations).
    static func recordedValues(_ cfg: ModelConfig, batch N: Int, visible V: Int) -> Double {
        let D = Double(cfg.hiddenSize), Dd = Double(cfg.decoderHiddenSize), T = Double(cfg.tokens), v = Double(V)
        let K = Double(cfg.headOutDim), img = Double(cfg.inChannels * cfg.inputSize * cfg.inputSize)
        let perSample = T * D + D + Double(cfg.depth) * (2 + v + T) * D + (1 + Double(cfg.decoderDepth)) * T * Dd + 2 * img + 2 * K * (1 + v)
        return Double(N) * perSample
    }

    /// Bytes of `run`'s results as Double (`NamedTensor`), roughly: the recorded activations,
    /// gradients, after-step student and teacher, and the sampler's states.
    public static func estimatedResultsBytes(_ cfg: ModelConfig, batch N: Int, visible V: Int, samplerSteps: Int?) -> Double {
        let c = cfg.parameterCounts
        let trainable = Double(cfg.studentParameters.filter { !$0.frozen }.map(\.count).reduce(0, +))
        let tables = Double((1 + cfg.tokens) * cfg.hiddenSize + cfg.tokens * cfg.decoderHiddenSize)
        let img = Double(N * cfg.inChannels * cfg.inputSize * cfg.inputSize)
        let sampler = samplerSteps.map { Double($0 + 2) * img + Double($0 + 1) } ?? 0
        return 8 * (tables + recordedValues(cfg, batch: N, visible: V) + trainable + Double(c.total) + Double(c.encoder + c.head)
                    + 2 * Double(cfg.headOutDim) + sampler)
    }
}
