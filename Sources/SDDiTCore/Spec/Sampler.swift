import RealModule

// EDM's deterministic Heun sampler (SPEC §6, Karras et al. 2022 Algorithm 2, S_churn = 0):
// the noise levels, the integrator and guidance, one home for both backends. Each backend
// passes its own denoiser.
public enum HeunSampler {
    /// sigma_i = (smax^(1/rho) + i/(N-1)(smin^(1/rho) - smax^(1/rho)))^rho, i < N; sigma_N = 0.
    /// N = 1 (where i/(N-1) is 0/0) gives [smax, 0]; callers that take N from users require N >= 2.
    public static func sigmas<T: RefScalar>(steps N: Int, sigmaMin: T, sigmaMax: T, rho: T) -> [T] {
        let a = T.pow(sigmaMax, 1 / rho), b = T.pow(sigmaMin, 1 / rho)
        let s = (0..<N).map { i in T.pow(a + (N > 1 ? T(i) / T(N - 1) : 0) * (b - a), rho) }
        return s + [0]
    }

    /// Integrates dx/dsigma = (x - D(x; sigma))/sigma from sigmas[0] to 0; returns x after
    /// every step (the last is the sample).
    public static func sample<T: RefScalar>(xInit: Tensor<T>, sigmas: [T],
                                            denoise: (Tensor<T>, T) throws -> Tensor<T>) rethrows -> [Tensor<T>] {
        var x = xInit, out: [Tensor<T>] = []
        for i in 0..<max(sigmas.count - 1, 0) {
            let s0 = sigmas[i], s1 = sigmas[i + 1]
            let D0 = try denoise(x, s0)
            var d = x
            for j in 0..<x.count { d.data[j] = (x.data[j] - D0.data[j]) / s0 }
            var xn = x
            for j in 0..<x.count { xn.data[j] = x.data[j] + (s1 - s0) * d.data[j] }
            if s1 != 0 {
                let D1 = try denoise(xn, s1)
                for j in 0..<x.count {
                    let d1 = (xn.data[j] - D1.data[j]) / s1
                    xn.data[j] = x.data[j] + (s1 - s0) * (d.data[j] + d1) / 2
                }
            }
            x = xn
            out.append(x)
        }
        return out
    }

    /// Classifier-free guidance (SPEC §6): D_w = D(., null) + w (D(., y) - D(., null)).
    @inlinable public static func guided<T: RefScalar>(conditional d: T, unconditional d0: T, scale w: T) -> T {
        d0 + w * (d - d0)
    }
}
