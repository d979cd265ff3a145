import SDDiTCore

// Checks of the public entry points' inputs, so that a bad batch throws a ConfigError with
// one clear line instead of reading or writing out of bounds.
extension FastModel {
    /// N >= 1 labels in 0...numClasses (numClasses is the null label).
    func validateLabels(_ labels: [Int]) throws {
        guard !labels.isEmpty else { throw ConfigError("fast path: the batch is empty (N = 0)") }
        if let y = labels.first(where: { !(0...cfg.numClasses).contains($0) }) {
            throw ConfigError("fast path: label \(y) is outside 0...\(cfg.numClasses) (\(cfg.numClasses) is the null label)")
        }
    }

    /// `name` holds N images [N, C, H, W].
    func validateImages(_ name: String, _ x: [Double], N: Int) throws {
        let n = N * cfg.inChannels * cfg.inputSize * cfg.inputSize
        guard x.count == n else {
            throw ConfigError("fast path: \(name) has \(x.count) values, expected N C H W = \(N) x \(cfg.inChannels) x \(cfg.inputSize) x \(cfg.inputSize) = \(n)")
        }
    }

    /// N noise levels, each finite and > 0.
    func validateSigmas(_ name: String, _ s: [Double], N: Int) throws {
        guard s.count == N else { throw ConfigError("fast path: \(name) has \(s.count) values for a batch of \(N)") }
        if let v = s.first(where: { !($0.isFinite && $0 > 0) }) { throw ConfigError("fast path: \(name) holds \(v); noise levels must be finite and > 0") }
    }

    /// The visible tokens of a mask [N][T] (1 = hidden) by SPEC's rule (Core's `visibleIndices`:
    /// 0 / 1 entries, the same V >= 1 visible tokens in every row).
    func visibleTokens(_ mask: [[Int]], N: Int) throws -> [[Int]] {
        do { return try visibleIndices(mask: mask, tokens: cfg.tokens, batch: N) } catch { throw ConfigError("fast path: \(error)") }
    }

    /// A training step's inputs (SPEC §7 /inputs).
    func validate(_ I: FastStepInputs) throws {
        try validateLabels(I.labels)
        let N = I.labels.count
        try validateImages("x0", I.x0, N: N); try validateImages("noise_s", I.noiseS, N: N); try validateImages("noise_t", I.noiseT, N: N)
        try validateSigmas("sigma_s", I.sigmaS, N: N)
        _ = try visibleTokens(I.mask, N: N)
    }

    /// A plain-DiT step's inputs.
    func validate(_ I: FastDiTInputs) throws {
        try validateLabels(I.labels)
        let N = I.labels.count
        try validateImages("x0", I.x0, N: N); try validateImages("noise", I.noise, N: N)
        try validateSigmas("sigma", I.sigma, N: N)
    }

    /// The denoiser's inputs.
    func validateDenoise(_ x: [Double], sigmas: [Double], labels: [Int]) throws {
        try validateLabels(labels)
        try validateImages("x", x, N: labels.count)
        try validateSigmas("sigma", sigmas, N: labels.count)
    }

    /// The sampler's inputs: a decreasing schedule's sigmas, all finite, > 0 but the last (>= 0).
    func validateSample(xInit: [Double], labels: [Int], sigmas: [Double]) throws {
        try validateLabels(labels)
        try validateImages("x_init", xInit, N: labels.count)
        guard let last = sigmas.last, last.isFinite, last >= 0 else { throw ConfigError("fast path: the sampler needs sigmas ending in a finite value >= 0") }
        try validateSigmas("sigmas", Array(sigmas.dropLast()), N: sigmas.count - 1)
    }

    /// A training step needs AdamW's moments (a forward-and-backward-only model has none).
    func requireOptimizer() throws {
        guard hasOptimizer else { throw ConfigError("fast path: a forward-and-backward-only model cannot take a training step") }
    }
}
