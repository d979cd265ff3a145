import Glibc
import SDDiTCore

/// What a training loop needs beyond one step: the optimizer's state for checkpoints (exact
/// resume) and EDM's weight (held-out evaluation).
extension FastModel {
    /// AdamW's moments by key (float32, as the step keeps them) and its step count.
    public func optimizerState() -> (m: [String: [Float]], v: [String: [Float]], step: Int) {
        (adamM.mapValues { $0.array() }, adamV.mapValues { $0.array() }, adamStep)
    }

    /// Restores AdamW's moments and step count; every trainable key must be present with its size.
    public func restoreOptimizer(m: [String: [Float]], v: [String: [Float]], step: Int) throws {
        for (key, b) in adamM {
            guard let mv = m[key], let vv = v[key], mv.count == b.count, vv.count == b.count else {
                throw ConfigError("optimizer state: moments of '\(key)' are missing or have the wrong size (expected \(b.count) values)")
            }
            b.copy(from: mv); adamV[key]!.copy(from: vv)
        }
        adamStep = step
    }

    /// EDM's weight lambda(sigma) = (s^2 + sd^2) / (s sd)^2 (SPEC §4), in Double.
    public func edmWeight(_ sigma: Double) -> Double { EDMCoefficients<Double>(sigma: sigma, sigmaData: cfg.sigmaData).lambda }
}
