import SDDiTCore

// The teacher's view (SPEC §4; the reference's Objective): the teacher sees every token of
// x_T = x0 + sigma_T n_T at the fixed sigma_T, preconditioned like the student's view:
//   x_in = c_in(sigma_T) x_T    (float32; the half type in pure modes), c_noise(sigma_T) for every sample
// and its head sees the rows the student's head sees: the CLS token and the student's visible
// tokens, gathered from the teacher encoder's output [N, 1 + T, D] into [N, 1 + V, D].
// No backward: the teacher gets no gradient.
enum FastTeacherView {
    /// x_in into `xIn`; the EDM coefficients at sigma_T.
    static func input(_ ctx: FastContext, x0: [Double], noise: [Double], _ xIn: FT) -> EDMCoefficients<Double> {
        let sT = ctx.cfg.teacherSigma, eT = EDMCoefficients<Double>(sigma: sT, sigmaData: ctx.cfg.sigmaData)
        let n = ctx.variant.teacherClean ? 0 : sT   // a divergence: the teacher on clean x0
        for j in 0..<x0.count { xIn.p[j] = Float(eT.cIn * (x0[j] + n * noise[j])) }
        if ctx.prec.isPure { ctx.prec.round(xIn.p, xIn.count) }
        return eT
    }

    /// out[n, 0] and out[n, 1 + keep[n][v]] into `rows` [N, 1 + V, D].
    static func gather(_ out: FT, keep: [[Int]], _ rows: FT) {
        let N = keep.count, V = keep[0].count, Tn = out.shape[1] - 1, D = out.last
        for n in 0..<N {
            (rows.p + n * (1 + V) * D).update(from: out.p + n * (1 + Tn) * D, count: D)
            for (v, t) in keep[n].enumerated() {
                (rows.p + (n * (1 + V) + 1 + v) * D).update(from: out.p + (n * (1 + Tn) + 1 + t) * D, count: D)
            }
        }
    }
}
