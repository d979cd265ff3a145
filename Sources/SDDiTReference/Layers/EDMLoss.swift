import RealModule

// EDM's loss (SPEC §4, Karras et al. 2022, eq. 2); its weight lambda is Core's
// `EDMCoefficients.lossWeight`.

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
