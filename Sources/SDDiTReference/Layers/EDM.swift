import RealModule

// EDM preconditioning and loss weight (SPEC §3-4, Karras et al. 2022, Table 1).
public struct EDMCoefficients<T: RefScalar>: Sendable {
    public var cSkip: T, cOut: T, cIn: T, cNoise: T
    /// c_skip = sd^2/(s^2+sd^2), c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4
    public init(sigma s: T, sigmaData sd: T) {
        cSkip = sd * sd / (s * s + sd * sd)
        cOut = s * sd / (s * s + sd * sd).squareRoot()
        cIn = 1 / (s * s + sd * sd).squareRoot()
        cNoise = T.log(s) / 4
    }
    /// lambda(s) = (s^2+sd^2)/(s sd)^2 = 1/c_out^2
    public static func lossWeight(sigma s: T, sigmaData sd: T) -> T { (s * s + sd * sd) / ((s * sd) * (s * sd)) }
}

/// L_G = mean over all elements of lambda(s_n) (D - x0)^2; D, x0 [N, C, H, W].
public enum EDMLoss {
    public static func forward<T: RefScalar>(D: Tensor<T>, x0: Tensor<T>, sigma: [T], sigmaData: T) -> T {
        let N = D.shape[0], per = D.count / N
        var s: T = 0
        for n in 0..<N {
            let lam = EDMCoefficients.lossWeight(sigma: sigma[n], sigmaData: sigmaData)
            for i in 0..<per { let e = D.data[n * per + i] - x0.data[n * per + i]; s += lam * e * e }
        }
        return s / T(D.count)
    }
    /// dD += dL 2 lambda (D - x0) / numel
    public static func backward<T: RefScalar>(dL: T, D: Tensor<T>, x0: Tensor<T>, sigma: [T], sigmaData: T, dD: inout Tensor<T>) {
        let N = D.shape[0], per = D.count / N
        for n in 0..<N {
            let lam = EDMCoefficients.lossWeight(sigma: sigma[n], sigmaData: sigmaData)
            for i in 0..<per {
                dD.data[n * per + i] += dL * 2 * lam * (D.data[n * per + i] - x0.data[n * per + i]) / T(D.count)
            }
        }
    }
}
