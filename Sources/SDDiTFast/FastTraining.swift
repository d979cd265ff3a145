import Glibc
import SDDiTCore

/// What a training loop needs beyond one step: the optimizer's state for checkpoints (exact
/// resume) and EDM's weight (held-out evaluation).
extension FastModel {
    /// AdamW's moments by key (float32, as the step keeps them) and its step count.
    public func optimizerState() -> (m: [String: [Float]], v: [String: [Float]], step: Int) {
        adam?.state() ?? ([:], [:], 0)
    }

    /// Restores AdamW's moments and step count; every trainable key must be present with its size.
    public func restoreOptimizer(m: [String: [Float]], v: [String: [Float]], step: Int) throws {
        guard let adam else { throw ConfigError("fast path: this model has no optimizer to restore") }
        try adam.restore(m: m, v: v, step: step)
    }

    /// EDM's weight lambda(sigma) = (s^2 + sd^2) / (s sd)^2 (SPEC §4), in Double.
    public func edmWeight(_ sigma: Double) -> Double { EDMCoefficients<Double>(sigma: sigma, sigmaData: cfg.sigmaData).lambda }
}
