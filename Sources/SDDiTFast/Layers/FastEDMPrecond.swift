import SDDiTCore

// EDM's preconditioning (SPEC §3; EDM's EDMPrecond; the reference's Denoiser.preconditioned)
// around a network F, per sample n with sigma_n:
//   x_in = c_in x                    (float32; the half type in pure modes)
//   D = c_skip x + c_out F(x_in, c_noise)   (Double, as EDM keeps x and D; stored in float32 as student.D)
// Backward: dF = c_out dD, cast to the half type (F is a half-type matmul output under autocast).
enum FastEDMPrecond {
    /// F [N, C, H, W] (the network's output) and D in Double; x_in is written to `xIn`.
    static func forward(_ ctx: FastContext, _ x: [Double], _ e: [EDMCoefficients<Double>], xIn: FT,
                        network: (FT, [Double]) throws -> FT) rethrows -> (F: FT, D: [Double]) {
        let N = e.count, per = x.count / N, prec = ctx.prec
        for n in 0..<N { for i in 0..<per { xIn.p[n * per + i] = Float(e[n].cIn * x[n * per + i]) } }
        if prec.isPure { prec.round(xIn.p, xIn.count) }
        let F = try network(xIn, e.map(ctx.variant.cNoise))
        var D = [Double](repeating: 0, count: N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            D[j] = e[n].denoised(x: x[j], F: Double(F.p[j]))
        } }
        return (F, D)
    }

    /// D as the step stores it: float32, the half type in pure modes.
    static func store(_ ctx: FastContext, _ D: [Double], _ Dt: FT) {
        for j in 0..<D.count { Dt.p[j] = Float(D[j]) }
        if ctx.prec.isPure { ctx.prec.round(Dt.p, Dt.count) }
    }

    /// dF = c_out dD in place (`d` holds dD on entry, dF on return), cast to the half type;
    /// `name`: F's activation name (for the monitor).
    static func backward(_ ctx: FastContext, _ e: [EDMCoefficients<Double>], _ d: FT, F name: String, scale: Float) throws {
        let N = e.count, per = d.count / N
        for n in 0..<N {
            let cOut = Float(e[n].cOut)
            for i in 0..<per { d.p[n * per + i] *= cOut }
        }
        ctx.prec.round(d.p, d.count)
        try ctx.gradOut(name, "EDM loss x c_out x loss scale \(scale), cast to the half type", d)
    }
}
