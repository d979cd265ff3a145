import Glibc
import SDDiTCore

/// The fast path as a backend: everything SPEC §7 records about one training step and one
/// sampler run, computed in float32 (or a half-precision mode), reported as Double.
public enum FastBackend {
    public struct Setup {
        public var config: ModelConfig
        public var student: [String: Tensor<Double>]
        public var teacher: [String: Tensor<Double>]?
        public var inputs: FastStepInputs?
        public var centerCls: [Double]?, centerPatch: [Double]?
        public var sampler: (xInit: Tensor<Double>, labels: [Int], steps: Int, cfgScale: Double?)?
        public init(config: ModelConfig, student: [String: Tensor<Double>], teacher: [String: Tensor<Double>]?) {
            self.config = config; self.student = student; self.teacher = teacher
        }
        /// The student's tensor `key`, or one error line naming it.
        func studentTensor(_ key: String) throws -> [Double] {
            guard let t = student[key] else { throw ConfigError("fast path: the setup has no student tensor '\(key)'") }
            return t.data
        }
        /// The teacher's tensor `key` (the student's when the setup has no teacher).
        func teacherTensor(_ key: String) throws -> [Double] {
            guard let t = (teacher ?? student)[key] else { throw ConfigError("fast path: the setup has no teacher tensor '\(key)'") }
            return t.data
        }
    }

    /// MAE's 2-D sin-cos table (SPEC §2.2, Core's `SinCosPosEmbed`) evaluated in float32, for
    /// the check against a file's copy.
    public static func sinCos(width W: Int, grid: Int, clsRow: Bool) -> [Float] {
        (SinCosPosEmbed.table(width: W, grid: grid, clsRow: clsRow) as Tensor<Float>).data
    }

    /// `variant`: a deliberate deviation (planted-bug files in the tests); none by default.
    public static func run(_ s: Setup, precision: FastPrecision, variant: FastVariant = FastVariant()) throws -> [String: NamedTensor] {
        let cfg = s.config, label = precision.label
        var out: [String: NamedTensor] = [:]
        func nt(_ shape: [Int], _ v: [Float]) -> NamedTensor { NamedTensor(shape: shape, values: v.map { Double($0) }, precision: label) }
        out["params/pos_embed"] = nt([1, 1 + cfg.tokens, cfg.hiddenSize], sinCos(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true))
        out["params/decoder_pos_embed"] = nt([1, cfg.tokens, cfg.decoderHiddenSize], sinCos(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false))
        if let I = s.inputs {
            let m = FastModel(cfg, precision: precision, student: s.student, teacher: s.teacher,
                              centerCls: s.centerCls, centerPatch: s.centerPatch)
            m.variant = variant
            m.record = true
            let r = try m.trainStepFindingScale(I)
            for (k, v) in m.activations { out["activations/" + k] = nt(v.shape, v.values) }
            for (k, v) in r.losses { out["losses/" + k] = NamedTensor(shape: [], values: [v], precision: label) }
            for (k, v) in m.gradients() { out["grads/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: label) }
            for (k, v) in m.parameters() { out["after_step/params/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: label) }
            for (k, v) in m.parameters(teacher: true) { out["after_step/teacher/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: label) }
            out["after_step/center_cls"] = nt([cfg.headOutDim], m.centerCls)
            out["after_step/center_patch"] = nt([cfg.headOutDim], m.centerPatch)
        }
        if let sm = s.sampler {
            let m = FastModel(cfg, precision: precision, student: s.student, teacher: nil)
            m.variant = variant
            let sig = HeunSampler.sigmas(steps: sm.steps, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
            let traj = try m.sample(xInit: sm.xInit.data, labels: sm.labels, sigmas: sig, cfgScale: sm.cfgScale)
            // the sampler keeps x and sigmas in float64; the network ran in `precision`
            out["sampler/sigmas"] = NamedTensor(shape: [sig.count], values: sig, precision: .float64)
            for (i, x) in traj.enumerated() { out["sampler/x.\(i)"] = NamedTensor(shape: sm.xInit.shape, values: x, precision: label) }
            if let last = traj.last { out["sampler/out"] = NamedTensor(shape: sm.xInit.shape, values: last, precision: label) }
        }
        return out
    }
}
