import SDDiTCore

// EDM's loss (SPEC §4, Karras et al. 2022 eq. 2; the reference's EDMLoss), the SD-DiT step's
// and the plain DiT step's alike:
//   L_G = mean over all elements of lambda(sigma_n) (D - x0)^2
// lambda in float32 (autocast) or the half type (pure modes), each term in float32, the sum
// in Double. Backward, with the loss scale s: dD = s 2 lambda (D - x0) / numel (float32).
enum FastEDMLoss {
    /// lambda(sigma_n) as the step holds it.
    static func weights(_ prec: FastPrecision, _ e: [EDMCoefficients<Double>]) -> [Float] {
        e.map { c in prec.isPure ? prec.round(Float(c.lambda)) : Float(c.lambda) }
    }

    /// L_G from D [N, C, H, W] (float32 as stored) and x0.
    static func forward(D: FT, x0: [Double], lambda: [Float]) -> Double {
        let N = lambda.count, per = D.count / N
        var L = 0.0
        for n in 0..<N { for i in 0..<per {
            let e: Float = D.p[n * per + i] - Float(x0[n * per + i])
            let w: Float = lambda[n] * e * e
            L += Double(w)
        } }
        return L / Double(N * per)
    }

    /// dD = s 2 lambda (D - x0) / numel into `dD`.
    static func backward(D: FT, x0: [Double], lambda: [Float], scale: Float, dD: FT) {
        let N = lambda.count, per = D.count / N, numel = Float(N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            let e: Float = D.p[j] - Float(x0[j])
            dD.p[j] = scale * 2 * lambda[n] * e / numel
        } }
    }
}
