// The reference as a backend of `oracle diff` / `oracle dump`: everything SPEC §7 records
// about one training step and one sampler run, by dataset path.

public enum ReferenceBackend {
    /// Runs the setup in scalar type T (Double: the truth; Float80: its check); every result by path.
    public static func run<T: RefScalar>(_ s: RunSetup, as _: T.Type = T.self) throws -> [String: NamedTensor] {
        var out: [String: NamedTensor] = [:]
        try stream(s, as: T.self) { out[$0] = $1 }
        return out
    }

    /// The same results, each handed to `emit` once it is final and not kept: the activations
    /// and losses after the forward pass, then per student tensor (in `studentParameters`
    /// order) grads/KEY, after_step/params/KEY and after_step/teacher/KEY, the centers, the
    /// sampler. The step is AdamW's first (zero moments) and the EMA, one tensor at a time, so
    /// that beside the student, the teacher and the gradients only one updated tensor lives at
    /// once (an XL/2 step in 24 GiB); the numbers are `TrainingState.step`'s, bit for bit.
    public static func stream<T: RefScalar>(_ s: RunSetup, as _: T.Type = T.self,
                                            emit: (String, NamedTensor) throws -> Void) throws {
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
            var r = try Objective.run(cfg, student: P, teacher: TP, inputs: I)
            for (k, v) in r.activations { try emit("activations/" + k, named(v)) }
            r.activations = [:]
            for (k, v) in r.losses { try emit("losses/" + k, scalar(v)) }
            var adam = AdamW<T>(cfg)
            adam.step = 1
            let beta = T(cfg.emaBeta), teacherKeys = Set(cfg.teacherParameters.map(\.key))
            for spec in cfg.studentParameters {
                var p = P[spec.key]
                if let g = r.grads.removeValue(forKey: spec.key) {
                    try emit("grads/" + spec.key, named(g))
                    var m = Tensor<T>.zeros(like: g), v = m
                    adam.apply(&p, grad: g, m: &m, v: &v)
                }
                try emit("after_step/params/" + spec.key, named(p))
                if teacherKeys.contains(spec.key) {
                    var t = TP[spec.key]
                    EMA.blend(&t, p, beta: beta)
                    try emit("after_step/teacher/" + spec.key, named(t))
                }
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
