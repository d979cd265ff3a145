import RealModule

// EDM preconditioning and loss weight (SPEC §3-4, Karras et al. 2022, Table 1): the one home
// of these formulas for both backends (the fast path evaluates them in Double).
public struct EDMCoefficients<T: RefScalar>: Sendable {
    public var cSkip: T, cOut: T, cIn: T, cNoise: T
    /// EDM's loss weight at this sigma, `lossWeight(sigma:sigmaData:)`.
    public var lambda: T
    /// c_skip = sd^2/(s^2+sd^2), c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4
    public init(sigma s: T, sigmaData sd: T) {
        cSkip = sd * sd / (s * s + sd * sd)
        cOut = s * sd / (s * s + sd * sd).squareRoot()
        cIn = 1 / (s * s + sd * sd).squareRoot()
        cNoise = T.log(s) / 4
        lambda = Self.lossWeight(sigma: s, sigmaData: sd)
    }
    /// lambda(s) = (s^2+sd^2)/(s sd)^2 = 1/c_out^2
    public static func lossWeight(sigma s: T, sigmaData sd: T) -> T { (s * s + sd * sd) / ((s * sd) * (s * sd)) }

    /// D = c_skip x + c_out F (SPEC §3): the preconditioned denoiser's output from the
    /// network's raw output F.
    @inlinable public func denoised(x: T, F: T) -> T { cSkip * x + cOut * F }
}

/// EDM's noising (SPEC §4): the student's view x = x0 + sigma_n n of sample n.
public enum EDMNoise {
    /// x0, noise [N, ...] flattened; sigma [N].
    public static func noised<T: RefScalar>(x0: [T], sigma: [T], noise: [T]) -> [T] {
        let N = sigma.count, per = x0.count / max(N, 1)
        var x = x0
        for n in 0..<N { for i in 0..<per { x[n * per + i] = x0[n * per + i] + sigma[n] * noise[n * per + i] } }
        return x
    }
}
