// The reference as a backend of `oracle diff` / `oracle dump`: everything SPEC §7 records
// about one training step and one sampler run, by dataset path.

public enum ReferenceBackend {
    /// Runs the setup in scalar type T (Double: the truth; Float80: its check).
    public static func run<T: RefScalar>(_ s: RunSetup, as _: T.Type = T.self) throws -> [String: NamedTensor] {
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
        var out: [String: NamedTensor] = [:]
        // The fixed tables as SPEC §2.2 defines them (a check of the file's own copies).
        out["params/pos_embed"] = named(SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true) as Tensor<T>)
        out["params/decoder_pos_embed"] = named(SinCosPosEmbed.table(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false) as Tensor<T>)
        let P: Parameters<T> = s.student.converted()

        if let I0 = s.inputs {
            let TP: Parameters<T> = (s.teacher ?? s.student.subset(cfg.teacherParameters)).converted()
            let I: StepInputs<T> = I0.converted()
            var state = TrainingState(cfg, student: P, teacher: TP, centerCls: I.centerCls, centerPatch: I.centerPatch)
            state.optimizer.keepsMoments = false   // one step: its moments are not reported
            let r = try state.step(cfg, inputs: I)
            for (k, v) in r.activations { out["activations/" + k] = named(v) }
            for (k, v) in r.losses { out["losses/" + k] = scalar(v) }
            for (k, v) in r.grads { out["grads/" + k] = named(v) }
            for spec in cfg.studentParameters { out["after_step/params/" + spec.key] = named(state.student[spec.key]) }
            for spec in cfg.teacherParameters { out["after_step/teacher/" + spec.key] = named(state.teacher[spec.key]) }
            out["after_step/center_cls"] = named(state.centerCls)
            out["after_step/center_patch"] = named(state.centerPatch)
        }
        if let sm = s.sampler {
            let sig = HeunSampler.sigmas(steps: sm.steps, sigmaMin: T(cfg.sigmaMin), sigmaMax: T(cfg.sigmaMax), rho: T(cfg.rho))
            let traj = HeunSampler.run(cfg, P, xInit: sm.xInit.converted(), labels: sm.labels, sigmas: sig,
                                       cfgScale: sm.cfgScale.map { T($0) })
            out["sampler/sigmas"] = NamedTensor(shape: [sig.count], values: sig.map { Double($0) }, precision: prec)
            for (i, x) in traj.enumerated() { out["sampler/x.\(i)"] = named(x) }
            if let last = traj.last { out["sampler/out"] = named(last) }
        }
        return out
    }
}
