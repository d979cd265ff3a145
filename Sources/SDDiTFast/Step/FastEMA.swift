// The EMA teacher (SPEC §5; the reference's EMA): t <- beta t + (1 - beta) s for each teacher
// tensor (encoder and head) and the same student tensor, in float32; rounded to the half type
// in pure modes.
enum FastEMA {
    static func blend(_ ctx: FastContext, teacher t: FT, student s: FT, beta b: Float) {
        let sp = s.p, tp = t.p, beta = ctx.variant.emaReversed ? 1 - b : b   // a divergence: the blend reversed
        parallelRanges(t.count) { lo, hi in for i in lo..<hi { tp[i] = beta * tp[i] + (1 - beta) * sp[i] } }
        if ctx.prec.isPure { ctx.prec.round(t.p, t.count) }
    }
}
