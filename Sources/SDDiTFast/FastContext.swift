import SDDiTCore

/// What a fast layer needs besides its own parameters: the config, the precision mode, the
/// kernels, the workspace its buffers live in, the NaN/Inf monitor, the planted variant, and
/// the record of SPEC's activations. One per model; layers never see the model itself.
final class FastContext {
    let cfg: ModelConfig
    let prec: FastPrecision
    let ws = Workspace()
    let k: Kernels
    let monitor = Monitor()
    /// Deliberate deviations from SPEC, for planted-bug files (tests); none by default.
    var variant = FastVariant()
    /// Record the activations SPEC §7 names (`oracle dump`, `oracle diff`).
    var record = false
    var activations: [String: (shape: [Int], values: [Float])] = [:]
    /// The streamed step (`FastBackend.stream`): a block's buffers go as soon as it is done.
    var streamed = false

    init(_ cfg: ModelConfig, _ prec: FastPrecision) {
        self.cfg = cfg; self.prec = prec
        _ = KernelPerturbation.warnOnce
        k = Kernels(prec: prec, ws: ws)
        monitor.minNormal = prec.halfMinNormal
    }

    /// The patch embedding's kernels: TF32 operands under `variant.tf32PatchEmbedding` (cuDNN's
    /// default for convolutions), the model's otherwise.
    var patchKernels: Kernels { variant.tf32PatchEmbedding && prec == .fp32 ? Kernels(prec: .tf32, ws: ws) : k }

    /// Checks the output `name` of `op` (anomaly and headroom modes; one branch otherwise).
    func out(_ name: String, _ op: String, _ t: FT, _ inputs: [(String, FT)]) throws {
        try monitor.check(name, op, t.p, t.shape, inputs: inputs.map { ($0.0, UnsafePointer($0.1.p), $0.1.count) })
    }
    /// The same for the gradient of `name` in the backward pass ("d NAME").
    func gradOut(_ name: String, _ op: String, _ t: FT, inputs: [(String, FT)] = []) throws {
        try out(ActivationName.gradient(name), op + " (backward)", t, inputs)
    }
    /// Keeps a copy of `t` as SPEC activation `name` when recording.
    func remember(_ name: String, _ t: FT) {
        if record { activations[name] = (t.shape, t.array()) }
    }
}
