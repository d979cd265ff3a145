// After-step parameters judged by the math of the step (SPEC §5, hazard 2), not by a blanket
// allowance; each side's step is judged (the reference's passes by construction).
// AdamW's first step from zero moments has m^ = g and sqrt(v^) = |g|, so
//     p1 = p0 (1 - lr wd) - lr g / (|g| + eps)                                   (1)
// and the EMA teacher is t1 = beta t0 + (1 - beta) p1.                            (2)
// A correct implementation moves every entry with |g| >> eps by almost exactly lr, in the
// direction of -g: a blanket "within lr" allowance passes a parameter that was never updated,
// a step of lr/10, or an extra weight decay. Instead each element gets the interval of p1
// that (1) allows, from
//   - the side's own recorded gradient, when it has one: (1) evaluated on it, up to the side's
//     rounding u (4 |p0| + 16 lr). Its gradient is judged against the other side's separately
//     (grads/), so an entry whose gradient sign the side cannot resolve (the key third of
//     qkv.bias, SPEC hazard 1) may move by up to 2 lr from the other side's, and no other;
//   - otherwise the expected side's gradient g_e within the gradient rule's own bound
//     delta = atol + rtol |g_e| for that pair of precisions: (1) is monotone in g, so p1 lies
//     between its values at g_e - delta and g_e + delta (a full +-lr only where |g_e| <= delta).
// Fixed tensors (pos_embed, decoder_pos_embed, weight_g) must stay p0. When both sides are
// float64 (or better), an element within the float64 element rule of the other side's value
// (1e-9 |e| + 1e-9 max|e|, the fixture contract) also passes: the interval from its own
// gradient is far tighter than that where |g| ~ eps, and a file whose gradient differs in its
// last bits from the one its optimizer saw should not fail there. In float32 no such union:
// the float32 element rule (~1e-4) would pass an extra weight decay. The teacher follows (2)
// from the side's own p1 (or the interval above), up to 8 u (|t0| + |p1|).
// The slack, u the side's unit roundoff: a step rounds p0 to its type (u |p0|), then m, v,
// their quotient and lr / (1 - beta1) (a few u of lr; beta1 = 0.9 is inexact in binary), then
// the result (u |p1| <= u (|p0| + lr)): at most about 2 u |p0| + 8 u lr. The EMA rounds
// beta t0, (1 - beta) p1 (1 - beta computed from the rounded beta: u |p1|) and t1: about
// 3 u |t0| + 2 u |p1|. The slacks are twice those bounds. Measured use of the interval (the
// worst element of a tensor, |a - mid| / half-width): see DECISIONS.

/// The data the rule needs besides the two tensors being compared.
public struct AfterStepContext: Sendable {
    /// SPEC §5's optimizer settings of the run (the file's config).
    public var lr: Double, weightDecay: Double, eps: Double, emaBeta: Double
    /// The setup: "params/KEY" and "teacher/KEY" before the step.
    public var before: [String: NamedTensor]
    /// Each side's own datasets (grads/KEY, after_step/params/KEY), a and b as compared: all
    /// of them, or those of the key being judged (a streamed comparison).
    public var sideA: [String: NamedTensor], sideB: [String: NamedTensor]
    /// Whether each side recorded any gradient at all (a fixed tensor is judged only then).
    public var sideAHasGradients: Bool, sideBHasGradients: Bool
    public init(lr: Double, weightDecay: Double, eps: Double, emaBeta: Double, before: [String: NamedTensor],
                sideA: [String: NamedTensor], sideB: [String: NamedTensor],
                sideAHasGradients: Bool? = nil, sideBHasGradients: Bool? = nil) {
        self.lr = lr; self.weightDecay = weightDecay; self.eps = eps; self.emaBeta = emaBeta
        self.before = before; self.sideA = sideA; self.sideB = sideB
        self.sideAHasGradients = sideAHasGradients ?? sideA.keys.contains { $0.hasPrefix("grads/") }
        self.sideBHasGradients = sideBHasGradients ?? sideB.keys.contains { $0.hasPrefix("grads/") }
    }
}

public enum AfterStepRule {
    /// Rounding slack in units of the side's unit roundoff u (see the header): the step
    /// u (pFactor |p0| + lrFactor lr), the EMA u emaFactor (|t0| + |p1|).
    public static let pFactor = 4.0, lrFactor = 16.0, emaFactor = 8.0

    /// The comparison of `path` (after_step/params/KEY or after_step/teacher/KEY) under the
    /// rule, or nil when the rule does not apply (another path, or no p0 / gradient to judge
    /// by: the caller then uses `Tolerances.rule`).
    public static func compare(_ path: String, _ a: NamedTensor, _ b: NamedTensor, _ ctx: AfterStepContext) -> Comparison? {
        let isParams = path.hasPrefix("after_step/params/"), isTeacher = path.hasPrefix("after_step/teacher/")
        guard isParams || isTeacher else { return nil }
        let key = String(path.dropFirst(isParams ? 18 : 19))
        guard a.shape == b.shape, a.values.count == b.values.count else { return nil }
        let expectA = a.precision > b.precision
        // Each side's step is judged, the more precise one too: a float32 file against the
        // fast-tf32 backend is the more precise side there, and its step must be right.
        var results: [Comparison] = []
        for judgeA in (expectA ? [false, true] : [true, false]) {
            let act = judgeA ? a : b, exp = judgeA ? b : a
            let actSide = judgeA ? ctx.sideA : ctx.sideB, expSide = judgeA ? ctx.sideB : ctx.sideA
            let anyGradient = ctx.sideAHasGradients || ctx.sideBHasGradients
            let bounds = isParams ? studentBounds(key, act: act, actSide: actSide, expSide: expSide, anyGradient: anyGradient, ctx)
                : teacherBounds(key, act: act, actSide: actSide, expSide: expSide, anyGradient: anyGradient, ctx)
            guard let (lo, hi, how) = bounds, lo.count == act.values.count else { return nil }
            var tol = Tolerance(rtol: 1, atolAbs: 2 * ctx.lr,
                                reason: "after-step: AdamW's first step (and the EMA) from " + how
                                    + "; 2 lr is the largest legitimate move difference (noise gradients)")
            // "{a}" / "{b}": the side's label ("the file's", "the reference's") when printed
            tol.label = (judgeA ? "{a}" : "{b}") + (isParams ? "'s AdamW step from " : "'s EMA teacher from ") + how
            var base: Tolerance? = nil
            if min(a.precision, b.precision) >= .float64 {
                base = Tolerances.rule(for: "after_step", a.precision, b.precision, lr: ctx.lr)
                tol.label! += ", or " + base!.description
            }
            results.append(Compare.interval(path, a, b, actual: act, expected: exp, lo: lo, hi: hi, or: base, tolerance: tol, lr: ctx.lr))
        }
        // the failing side if one fails (the less precise side first), else the closer to its limit
        return results.first { !$0.passed } ?? results.max { $0.maxRel < $1.maxRel }
    }

    /// u(g) = g / (|g| + eps): the first step's normalized update, monotone in g.
    @inline(__always) static func unit(_ g: Double, _ eps: Double) -> Double { g / (abs(g) + eps) }

    static func studentBounds(_ key: String, act: NamedTensor, actSide: [String: NamedTensor], expSide: [String: NamedTensor],
                              anyGradient: Bool, _ ctx: AfterStepContext) -> (lo: [Double], hi: [Double], how: String)? {
        guard let p0 = ctx.before["params/" + key], p0.values.count == act.values.count else { return nil }
        let u = max(act.precision.unitRoundoff, 0x1p-53), lr = ctx.lr, eps = ctx.eps   // the rule computes in Double
        let decay = 1 - lr * ctx.weightDecay
        let n = p0.values.count
        var lo = [Double](repeating: 0, count: n), hi = lo
        let gA = actSide["grads/" + key], gE = expSide["grads/" + key]
        if let gA, gA.values.count == n, gA.values.allSatisfy(\.isFinite) {
            for i in 0..<n {
                let x0 = p0.values[i], pred = x0 * decay - lr * unit(gA.values[i], eps)
                let s = u * (pFactor * abs(x0) + lrFactor * lr)
                lo[i] = pred - s; hi[i] = pred + s
            }
            return (lo, hi, "its own gradient, within u (4 |p0| + 16 lr)")
        }
        if let gE, gE.values.count == n {
            let gt = Tolerances.rule(for: "grads/" + key, act.precision, gE.precision, lr: lr)
            let atol = gt.atol(scale: gE.values.reduce(0) { max($0, abs($1)) })
            for i in 0..<n {
                let x0 = p0.values[i], g = gE.values[i], d = atol + gt.rtol * abs(g)
                let s = u * (pFactor * abs(x0) + lrFactor * lr)
                lo[i] = x0 * decay - lr * unit(g + d, eps) - s
                hi[i] = x0 * decay - lr * unit(g - d, eps) + s
            }
            return (lo, hi, "the other side's gradient within the gradient rule, u (4 |p0| + 16 lr)")
        }
        // a fixed tensor (no gradient anywhere): it must not move
        if !anyGradient { return nil }
        for i in 0..<n {
            let x0 = p0.values[i], s = u * pFactor * abs(x0)
            lo[i] = x0 - s; hi[i] = x0 + s
        }
        return (lo, hi, "p0 (a fixed tensor), within 4u |p0|")
    }

    static func teacherBounds(_ key: String, act: NamedTensor, actSide: [String: NamedTensor], expSide: [String: NamedTensor],
                              anyGradient: Bool, _ ctx: AfterStepContext) -> (lo: [Double], hi: [Double], how: String)? {
        guard let t0 = ctx.before["teacher/" + key], t0.values.count == act.values.count else { return nil }
        let beta = ctx.emaBeta, u = max(act.precision.unitRoundoff, 0x1p-53), c = emaFactor, n = t0.values.count
        var lo = [Double](repeating: 0, count: n), hi = lo
        if let p1 = actSide["after_step/params/" + key], p1.values.count == n {
            for i in 0..<n {
                let pred = beta * t0.values[i] + (1 - beta) * p1.values[i], s = c * u * (abs(t0.values[i]) + abs(p1.values[i]))
                lo[i] = pred - s; hi[i] = pred + s
            }
            return (lo, hi, "its own after-step student (EMA), within 8u (|t0| + |p1|)")
        }
        guard let (plo, phi, _) = studentBounds(key, act: act, actSide: actSide, expSide: expSide, anyGradient: anyGradient, ctx) else { return nil }
        for i in 0..<n {
            let bt = beta * t0.values[i], s = c * u * abs(t0.values[i])
            lo[i] = bt + (1 - beta) * plo[i] - s; hi[i] = bt + (1 - beta) * phi[i] + s
        }
        return (lo, hi, "the EMA of the student's allowed step, within \(Int(c))u |t0|")
    }
}

extension Compare {
    /// Judges `actual` element-wise against per-element intervals [lo, hi]. The report keeps
    /// the usual fields: max abs |a - e| (and its index), and in maxRel the worst use of an
    /// interval, |a - mid| / half-width (<= 1 passes; with `base`, the smaller of that and the
    /// use of the base rule). The first element outside, with its bounds, is in `outside`.
    public static func interval(_ name: String, _ a: NamedTensor, _ b: NamedTensor, actual act: NamedTensor, expected exp: NamedTensor,
                                lo: [Double], hi: [Double], or base: Tolerance? = nil, tolerance tol: Tolerance, lr: Double) -> Comparison {
        var c = Comparison(name: name, shapeA: a.shape, shapeB: b.shape, precisionA: a.precision,
                           precisionB: b.precision, tolerance: tol)
        c.count = act.values.count
        if let bad = Compare.firstNonFinite(a, b) { c.nonFinite = bad; return c }
        c.scale = exp.values.reduce(0) { max($0, abs($1)) }
        c.unitOfAbs = (lr, "lr")
        let baseAtol = base?.atol(scale: c.scale) ?? 0
        for i in 0..<c.count {
            let v = act.values[i], e = exp.values[i], d = abs(v - e)
            let mid = (lo[i] + hi[i]) / 2, half = max((hi[i] - lo[i]) / 2, .leastNormalMagnitude)
            var use = abs(v - mid) / half
            if let base { use = min(use, d / max(baseAtol + base.rtol * abs(e), .leastNormalMagnitude)) }
            if d > c.maxAbs || c.maxAbsIndex.isEmpty { c.maxAbs = d; c.maxAbsIndex = unravel(i, a.shape); c.maxAbsA = a.values[i]; c.maxAbsE = b.values[i] }
            if use > c.maxRel || c.maxRelIndex.isEmpty { c.maxRel = use; c.maxRelIndex = unravel(i, a.shape); c.maxRelA = a.values[i]; c.maxRelE = b.values[i] }
            let withinBase = base.map { d <= baseAtol + $0.rtol * abs(e) } ?? false
            if !(v >= lo[i] && v <= hi[i]), !withinBase {
                if c.bad == 0 { c.outside = (unravel(i, a.shape), v, lo[i], hi[i]) }
                c.bad += 1
            }
        }
        c.normwise = c.scale > 0 ? c.maxAbs / c.scale : c.maxAbs
        return c
    }
}
