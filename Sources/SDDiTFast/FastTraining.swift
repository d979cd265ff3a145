import Glibc
import SDDiTCore

/// What a training loop needs beyond one step: the optimizer's state for checkpoints (exact
/// resume) and the unmasked denoiser at a per-sample sigma (held-out evaluation).
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

    /// D(x; sigma_n, y) for every sample at its own sigma, every token visible (the sampler's
    /// denoiser, SPEC §2.10); x and D in Double, the network in this model's precision.
    public func denoise(_ x: [Double], sigmas: [Double], labels: [Int]) throws -> [Double] {
        let N = labels.count, C = cfg.inChannels, Hs = cfg.inputSize, per = C * Hs * Hs, sd = cfg.sigmaData
        let e = sigmas.map { EDMScalars(sigma: $0, sigmaData: sd) }
        let xIn = ws.get("student.x_in", [N, C, Hs, Hs])
        for n in 0..<N { for i in 0..<per { xIn.p[n * per + i] = Float(e[n].cIn * x[n * per + i]) } }
        if prec.isPure { prec.round(xIn.p, xIn.count) }
        let saved = record; record = false; defer { record = saved }
        let all = Array(repeating: Array(0..<cfg.tokens), count: N)
        let enc = try encoder("student", student, xIn: xIn, cNoise: e.map(\.cNoise), labels: labels, keep: all)
        let dec = try decoder(enc, student)
        let F = ws.get("student.F", [N, C, Hs, Hs])
        unpatchify(dec.out, F)
        var out = [Double](repeating: 0, count: N * per)
        for n in 0..<N { for i in 0..<per { out[n * per + i] = e[n].cSkip * x[n * per + i] + e[n].cOut * Double(F.p[n * per + i]) } }
        return out
    }

    /// EDM's weight lambda(sigma) = (s^2 + sd^2) / (s sd)^2 (SPEC §4), in Double.
    public func edmWeight(_ sigma: Double) -> Double { EDMScalars(sigma: sigma, sigmaData: cfg.sigmaData).lambda }
}
