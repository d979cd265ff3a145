// The reference as a backend of `oracle diff` / `oracle dump`: everything SPEC §7 records
// about one training step and one sampler run, by dataset path.

public enum ReferenceBackend {
    /// Runs the setup in scalar type T (Double: the truth; Float80: its check); every result by path.
    public static func run<T: RefScalar>(_ s: RunSetup, as _: T.Type = T.self) throws -> [String: NamedTensor] {
        var out: [String: NamedTensor] = [:]
        try stream(s, as: T.self) { out[$0] = $1 }
        return out
    }

    /// The same results, each handed to `emit` once it is final and not kept: per student
    /// tensor grads/KEY, after_step/params/KEY and after_step/teacher/KEY as soon as its part's
    /// backward is done (head, final layer, decoder blocks, decoder layer, encoder blocks), then
    /// the activations and losses, the rest of the parameters, the centers, the sampler. The
    /// step is AdamW's first (zero moments) and the EMA, one tensor at a time, so that beside
    /// the student, the teacher and the saved activations only the gradients still accumulating
    /// and one updated tensor live (an XL/2 step at batch 2 in 24 GiB); the numbers are
    /// `TrainingState.step`'s, bit for bit.
    public static func stream<T: RefScalar>(_ s: RunSetup, as _: T.Type = T.self,
                                            emit: (String, NamedTensor) throws -> Void) throws {
        // the gradient hook holds `emit` only while the step runs
        try withoutActuallyEscaping(emit) { emit in try streamed(s, as: T.self, emit: emit) }
    }

    static func streamed<T: RefScalar>(_ s: RunSetup, as _: T.Type, emit: @escaping (String, NamedTensor) throws -> Void) throws {
        let cfg = s.config
        let prec: Precision = T.significandBitCount > 52 ? .float80 : (T.significandBitCount == 52 ? .float64 : .float32)
        func named(_ t: Tensor<T>) -> NamedTensor {   // Double: the storage itself, not a copy
            NamedTensor(shape: t.shape, values: T.self == Double.self ? unsafeBitCast(t.data, to: [Double].self) : t.data.map { Double($0) },
                        precision: prec)
        }
        func scalar(_ x: T) -> NamedTensor { NamedTensor(shape: [], values: [Double(x)], precision: prec) }
        let evaluations = s.sampler.map { (2 * $0.steps - 1) * ($0.cfgScale == nil ? 1 : 2) } ?? 0   // Heun, CFG doubles
        RefProgress.begin(prec == .float80 ? "ref80" : "ref",
                          total: RefProgress.units(cfg, trainingStep: s.inputs != nil, evaluations: evaluations))
        // The fixed tables as SPEC §2.2 defines them (a check of the file's own copies).
        try emit("params/pos_embed", named(SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true) as Tensor<T>))
        try emit("params/decoder_pos_embed", named(SinCosPosEmbed.table(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false) as Tensor<T>))
        let P: Parameters<T> = s.student.converted()

        if let I0 = s.inputs {
            let TP: Parameters<T> = (s.teacher ?? s.student.subset(cfg.teacherParameters)).converted()
            let I: StepInputs<T> = I0.converted()
            // per student tensor: its gradient, AdamW's first step, the teacher's EMA of it
            var adam = AdamW<T>(cfg)
            adam.step = 1
            let beta = T(cfg.emaBeta), teacherKeys = Set(cfg.teacherParameters.map(\.key))
            var done = Set<String>(), failure: Error? = nil
            func step(_ key: String, _ g: Tensor<T>?) throws {
                done.insert(key)
                var p = P[key]
                if let g {
                    try emit("grads/" + key, named(g))
                    var m = Tensor<T>.zeros(like: g), v = m
                    adam.apply(&p, grad: g, m: &m, v: &v)
                }
                try emit("after_step/params/" + key, named(p))
                if teacherKeys.contains(key) {
                    var t = TP[key]
                    EMA.blend(&t, p, beta: beta)
                    try emit("after_step/teacher/" + key, named(t))
                }
            }
            // a block's gradients are stepped as soon as its backward is done, and dropped
            var r = try Objective.run(cfg, student: P, teacher: TP, inputs: I, finalGradients: { key, g in
                guard failure == nil else { return }
                do { try step(key, g) } catch { failure = error }
            })
            if let failure { throw failure }
            for (k, v) in r.activations { try emit("activations/" + k, named(v)) }
            r.activations = [:]
            for (k, v) in r.losses { try emit("losses/" + k, scalar(v)) }
            for spec in cfg.studentParameters where !done.contains(spec.key) {
                try step(spec.key, r.grads.removeValue(forKey: spec.key))
            }
            try emit("after_step/center_cls", named(r.newCenterCls))
            try emit("after_step/center_patch", named(r.newCenterPatch))
        }
        if let sm = s.sampler {
            let sig = HeunSampler.sigmas(steps: sm.steps, sigmaMin: T(cfg.sigmaMin), sigmaMax: T(cfg.sigmaMax), rho: T(cfg.rho))
            let traj = HeunSampler.run(cfg, P, xInit: sm.xInit.converted(), labels: sm.labels, sigmas: sig,
                                       cfgScale: sm.cfgScale.map { T($0) })
            try emit("sampler/sigmas", NamedTensor(shape: [sig.count], values: sig.map { Double($0) }, precision: prec))
            for (i, x) in traj.enumerated() { try emit("sampler/x.\(i)", named(x)) }
            if let last = traj.last { try emit("sampler/out", named(last)) }
        }
    }
}
