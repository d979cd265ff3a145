import RealModule

// The reference's sampler: Core's Heun integrator (Spec/Sampler.swift) over the reference
// denoiser, with optional guidance.
extension HeunSampler {
    /// The model's sampler: D_w = D(., null) + w (D(., y) - D(., null)) when `cfgScale` is set.
    public static func run<T: RefScalar>(_ cfg: ModelConfig, _ P: Parameters<T>, xInit: Tensor<T>, labels: [Int],
                                         sigmas: [T], cfgScale: T? = nil) -> [Tensor<T>] {
        let N = xInit.shape[0]
        return sample(xInit: xInit, sigmas: sigmas) { x, s in
            let sig = Array(repeating: s, count: N)
            let d = Denoiser.evaluate(cfg, P, x: x, sigma: sig, labels: labels)
            guard let w = cfgScale else { return d }
            let d0 = Denoiser.evaluate(cfg, P, x: x, sigma: sig, labels: Array(repeating: cfg.numClasses, count: N))
            var out = d
            for j in 0..<d.count { out.data[j] = guided(conditional: d.data[j], unconditional: d0.data[j], scale: w) }
            return out
        }
    }
}
