import Foundation

/// The pass rule of every comparison: |a - e| <= atol + rtol |e|, with e the more precise
/// side (b when both are equally precise) and atol = atolAbs + atolScale * max|e| over the
/// tensor. The reported relative error rel = |a - e| / (|e| + atol / rtol) does not blow up
/// at zero, and rel <= rtol is exactly the pass rule.
public struct Tolerance: Sendable, Equatable, CustomStringConvertible {
    public var rtol: Double
    public var atolAbs: Double
    public var atolScale: Double
    /// Why these numbers (printed with --verbose and in the README's table).
    public var reason: String
    /// Replaces the formula in report lines when the rule is not |a - e| <= atol + rtol |e|
    /// (the after-step intervals of `AfterStepRule`).
    public var label: String? = nil

    public init(rtol: Double, atolAbs: Double = 0, atolScale: Double = 0, reason: String = "") {
        self.rtol = rtol; self.atolAbs = atolAbs; self.atolScale = atolScale; self.reason = reason
    }

    public func atol(scale: Double) -> Double { atolAbs + atolScale * scale }

    public var description: String { description(labelA: "a", labelB: "b") }

    /// The rule as printed, the sides named by their labels where it names them.
    public func description(labelA: String, labelB: String) -> String {
        if let label { return label.replacingOccurrences(of: "{a}", with: labelA).replacingOccurrences(of: "{b}", with: labelB) }
        var s = String(format: "%.0e*|e|", rtol)
        if atolAbs > 0 { s = String(format: "%.0e + ", atolAbs) + s }
        if atolScale > 0 { s += String(format: " + %.0e*max|e|", atolScale) }
        return s
    }
}

/// The outcome of comparing one tensor of side a with side b.
public struct Comparison: Sendable {
    public var name: String
    public var shapeA: [Int], shapeB: [Int]
    public var precisionA: Precision, precisionB: Precision
    public var tolerance: Tolerance
    public var count = 0, bad = 0
    public var maxAbs = 0.0, maxAbsIndex: [Int] = [], maxAbsA = 0.0, maxAbsE = 0.0
    public var maxRel = 0.0, maxRelIndex: [Int] = [], maxRelA = 0.0, maxRelE = 0.0
    /// Largest |e| of the tensor (the scale of atolScale), and the norm-wise error max|a-e|/max|e|.
    public var scale = 0.0
    public var normwise = 0.0
    public var effectiveAtol = 0.0
    /// The first non-finite element: "a" or "b", its index and value.
    public var nonFinite: (side: String, index: [Int], value: Double)?
    /// Interval rules (`Compare.interval`): the first element outside its interval, with the
    /// interval; and the unit the absolute error is also printed in (lr for after-step).
    public var outside: (index: [Int], value: Double, lo: Double, hi: Double)?
    public var unitOfAbs: (size: Double, name: String)?
    public var shapeMismatch: Bool { shapeA != shapeB }
    /// How close to its limit: 1 is the limit (max rel / rtol; for interval rules, the worst
    /// use of an interval).
    public var closeness: Double {
        max(maxRel / max(tolerance.rtol, 1e-300), calibration.map { $0.ratio / $0.limit } ?? 0)
    }
    /// Calibrated verdict (`Calibration`): the norm-wise error as a multiple of the error of a
    /// known-correct implementation in the precision this side claims (`level`), and the limit.
    public var calibration: (level: Double, ratio: Double, limit: Double, precision: String)?
    /// Bits of agreement with the other side: -log2 of the norm-wise error, at most 64, and 64
    /// when the sides are equal (not 53: a difference on an element far below max|e| puts the
    /// norm-wise error of two float64 tensors below 2^-53, and equal must never read as less
    /// agreement than nearly equal).
    public var bits: Double { normwise > 0 ? min(-log2(normwise), 64) : 64 }
    public var calibrationFailed: Bool { calibration.map { !($0.ratio <= $0.limit) } ?? false }
    public var passed: Bool { !shapeMismatch && nonFinite == nil && bad == 0 && !calibrationFailed }
}

public enum Compare {
    /// The first non-finite value of a, else of b: its side ("a" or "b"), index and value.
    static func firstNonFinite(_ a: NamedTensor, _ b: NamedTensor) -> (String, [Int], Double)? {
        for (side, vals) in [("a", a.values), ("b", b.values)] {
            if let i = vals.firstIndex(where: { !$0.isFinite }) { return (side, unravel(i, a.shape), vals[i]) }
        }
        return nil
    }

    /// Compares a against b element-wise under `tol`; the expected side is the more precise one.
    public static func tensors(_ name: String, _ a: NamedTensor, _ b: NamedTensor, tolerance tol: Tolerance) -> Comparison {
        var c = Comparison(name: name, shapeA: a.shape, shapeB: b.shape, precisionA: a.precision,
                           precisionB: b.precision, tolerance: tol)
        guard a.shape == b.shape, a.values.count == b.values.count else { return c }
        let expectA = a.precision > b.precision
        let act = expectA ? b.values : a.values, exp = expectA ? a.values : b.values
        c.count = exp.count
        if let bad = Compare.firstNonFinite(a, b) { c.nonFinite = bad; return c }
        c.scale = exp.reduce(0) { max($0, abs($1)) }
        let atol = tol.atol(scale: c.scale)
        c.effectiveAtol = atol
        let floor = tol.rtol > 0 ? atol / tol.rtol : 0
        for i in 0..<exp.count {
            let e = exp[i], v = act[i], d = abs(v - e)
            let rel = floor > 0 || e != 0 ? d / (abs(e) + floor) : (d == 0 ? 0 : .infinity)
            if d > c.maxAbs || c.maxAbsIndex.isEmpty { c.maxAbs = d; c.maxAbsIndex = unravel(i, a.shape); c.maxAbsA = a.values[i]; c.maxAbsE = b.values[i] }
            if rel > c.maxRel || c.maxRelIndex.isEmpty { c.maxRel = rel; c.maxRelIndex = unravel(i, a.shape); c.maxRelA = a.values[i]; c.maxRelE = b.values[i] }
            if d > atol + tol.rtol * abs(e) { c.bad += 1 }
        }
        c.normwise = c.scale > 0 ? c.maxAbs / c.scale : c.maxAbs
        return c
    }
}

// MARK: - Report lines (STYLE: the same lines in `oracle diff` and in test failures)

public func fmt17(_ x: Double, _ p: Precision) -> String {
    String(format: p <= .float32 ? "%.9g" : "%.17g", x)
}

extension Comparison {
    /// One or two lines: the verdict with name, shape, sides, rule and count; then where the
    /// worst absolute and relative errors sit, with both values.
    public func lines(labelA: String, labelB: String) -> [String] {
        let shape = "[" + shapeA.map(String.init).joined(separator: ", ") + "]"
        let sides = "\(labelA)(\(precisionA.rawValue)) vs \(labelB)(\(precisionB.rawValue))"
        if shapeMismatch {
            return ["FAIL \(name) shape \(shapeA) vs \(shapeB)  \(sides)"]
        }
        if let nf = nonFinite {
            return ["FAIL \(name) \(shape)  \(sides)  non-finite \(nf.value) in \(nf.side == "a" ? labelA : labelB) at \(nf.index)"]
        }
        let p = min(precisionA, precisionB)
        var head = String(format: "%@ %@ %@  %@  rule %@  %d / %d bad", passed ? "ok  " : "FAIL", name, shape, sides,
                          tolerance.description(labelA: labelA, labelB: labelB), bad, count)
        if let cal = calibration {
            head += String(format: "; %.1f bits; error x%.3g the %@ level %.2e (limit x%.0f)%@", bits, cal.ratio, cal.precision, cal.level, cal.limit,
                           calibrationFailed ? ": far above a correct \(cal.precision) run" : "")
        }
        if let (size, unit) = unitOfAbs {
            var detail = String(format: "     max abs %.2e (%.3g %@) at %@  a %@  b %@   worst use of the interval %.2f at %@",
                                maxAbs, maxAbs / size, unit, "\(maxAbsIndex)", fmt17(maxAbsA, p), fmt17(maxAbsE, p),
                                maxRel, "\(maxRelIndex)")
            if let o = outside {
                detail += String(format: "\n     first outside at %@: %@ not in [%@, %@] (%.3g %@ beyond)", "\(o.index)",
                                 fmt17(o.value, p), fmt17(o.lo, p), fmt17(o.hi, p),
                                 max(o.lo - o.value, o.value - o.hi) / size, unit)
            }
            return [head, detail]
        }
        let detail = String(format: "     max abs %.2e at %@  a %@  b %@   max rel %.2e at %@  a %@  b %@",
                            maxAbs, "\(maxAbsIndex)", fmt17(maxAbsA, p), fmt17(maxAbsE, p),
                            maxRel, "\(maxRelIndex)", fmt17(maxRelA, p), fmt17(maxRelE, p))
        return [head, detail]
    }

    public var json: [String: Any] {
        var o: [String: Any] = [
            "name": name, "shape_a": shapeA, "shape_b": shapeB,
            "precision_a": precisionA.rawValue, "precision_b": precisionB.rawValue,
            "passed": passed, "count": count, "bad": bad, "rtol": tolerance.rtol,
            "atol": effectiveAtol, "max_abs": maxAbs, "max_abs_index": maxAbsIndex,
            "max_abs_a": maxAbsA, "max_abs_b": maxAbsE, "max_rel": maxRel, "max_rel_index": maxRelIndex,
            "max_rel_a": maxRelA, "max_rel_b": maxRelE, "scale": scale, "normwise": normwise,
        ]
        if let cal = calibration {
            o["calibration"] = ["level": cal.level, "ratio": cal.ratio, "limit": cal.limit, "precision": cal.precision, "failed": calibrationFailed]
        }
        if let (size, unit) = unitOfAbs { o["max_abs_in_\(unit)"] = maxAbs / size; o["rule"] = tolerance.description }
        if let out = outside { o["first_outside"] = ["index": out.index, "value": out.value, "lo": out.lo, "hi": out.hi] }
        if let nf = nonFinite { o["non_finite"] = ["side": nf.side, "index": nf.index, "value": "\(nf.value)"] }
        return o
    }
}
