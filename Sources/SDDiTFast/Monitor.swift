import Foundation
import SDDiTCore

/// The first non-finite value of a run: which activation (SPEC name), which operation,
/// where, and the magnitudes of the operation's inputs.
public struct NonFiniteError: Error, CustomStringConvertible, Sendable {
    public var tensor: String, operation: String, index: [Int], shape: [Int], value: Float
    public var inputs: [(name: String, maxAbs: Float)]
    public var description: String {
        let ins = inputs.map { "\($0.name) max|x| \($0.maxAbs)" }.joined(separator: ", ")
        return "first non-finite: \(tensor) = \(value) at \(index) of \(shape) in \(operation)"
            + (ins.isEmpty ? "" : "; inputs: \(ins)")
    }

    /// Why, in one line, given the half type's largest finite value (nil in float32).
    public func explanation(halfMax: Float?) -> String {
        let big = inputs.map(\.maxAbs).max() ?? 0
        if value.isNaN {
            return "NaN: an operation met inf - inf, 0 * inf or inf / inf (an input was already out of range"
                + (halfMax.map { ", largest finite half value \($0)" } ?? "") + ")"
        }
        if let m = halfMax {
            return "overflow: the result exceeds the half type's largest finite value \(m)"
                + (big > 0 ? String(format: " (largest input magnitude %.3g, %.1f bits of headroom left)", big, log2(Double(m) / Double(big))) : "")
        }
        return "overflow beyond float32's range"
    }
}

/// Per named tensor: largest magnitude, bits of headroom before the half type overflows,
/// and the fraction of non-zero values below the half type's smallest normal number.
public struct HeadroomEntry: Sendable {
    public var name: String
    public var maxAbs: Float = 0
    public var nonZero = 0, belowNormal = 0, count = 0
    public var nonFinite = 0
    /// log2(half max / max|x|): bits left before overflow (negative: overflowed).
    public func headroomBits(_ halfMax: Float) -> Double {
        maxAbs > 0 ? log2(Double(halfMax) / Double(maxAbs)) : .infinity
    }
    public var underflowFraction: Double { nonZero > 0 ? Double(belowNormal) / Double(nonZero) : 0 }
    /// Non-zero finite values by binary exponent: exponents[e + 149] counts |x| in [2^e, 2^(e+1)).
    public var exponents = [Int](repeating: 0, count: 277)

    /// GradScaler collapse in one number: the largest loss scale at which more than half of
    /// this tensor's non-zero values fall below `minNormal`, for values recorded at loss scale
    /// `recorded`. Exact for power-of-two scales and `minNormal` (fp16 2^-14, bf16 2^-126):
    /// scaling by 2^j moves each exponent by j, and |x| 2^j < 2^m iff exponent(x) + j < m.
    /// The smallest t with #{e < t} > nonZero / 2 gives 2^(m - t) times `recorded`.
    public func quietScale(recorded: Float, minNormal: Float) -> Double? {
        guard nonZero > 0 else { return nil }
        let m = Int(minNormal.exponent)
        var below = 0
        for (i, c) in exponents.enumerated() {
            below += c
            if 2 * below > nonZero { return Double(recorded) * Double(sign: .plus, exponent: m - (i - 149 + 1), significand: 1) }
        }
        return nil
    }
}

/// Watches every operation's output: anomaly mode stops at the first non-finite value,
/// headroom mode records statistics per tensor name. Off: one branch per op.
public final class Monitor {
    public var anomaly = false
    /// With `anomaly`: leave the loss-scaled backward pass (tensors "d NAME" and the parameter
    /// gradients) to the GradScaler, which skips such steps and backs off; only forward values
    /// and losses stop the run (`oracle train --anomaly` in fp16 modes). Off by default.
    public var anomalyLeavesBackwardToScaler = false
    public var recordHeadroom = false
    public var minNormal: Float = 6.103515625e-05
    public private(set) var entries: [String: HeadroomEntry] = [:]
    public private(set) var order: [String] = []
    public init() {}

    @inline(__always) var active: Bool { anomaly || recordHeadroom }

    /// Checks `count` values of the output `name` of `operation`.
    func check(_ name: String, _ operation: String, _ p: UnsafePointer<Float>, _ shape: [Int],
               inputs: @autoclosure () -> [(String, UnsafePointer<Float>, Int)]) throws {
        guard active else { return }
        let count = shape.reduce(1, *)
        if recordHeadroom { record(name, p, count) }
        if anomaly && !(anomalyLeavesBackwardToScaler && name.hasPrefix("d ")) {
            for i in 0..<count where !p[i].isFinite {
                let ins = inputs().map { (n, q, c) -> (name: String, maxAbs: Float) in
                    var m: Float = 0
                    for j in 0..<c { m = max(m, abs(q[j])) }
                    return (n, m)
                }
                throw NonFiniteError(tensor: name, operation: operation, index: unravel(i, shape), shape: shape,
                                     value: p[i], inputs: ins)
            }
        }
    }

    /// Adds `count` values times `scale` to `name`'s headroom statistics.
    public func record(_ name: String, _ p: UnsafePointer<Float>, _ count: Int, scale: Float = 1) {
        var e = entries[name] ?? HeadroomEntry(name: name)
        if entries[name] == nil { order.append(name) }
        for i in 0..<count {
            let v = p[i] * scale
            if !v.isFinite { e.nonFinite += 1; continue }
            let a = abs(v)
            if a > e.maxAbs { e.maxAbs = a }
            if a != 0 {
                e.nonZero += 1
                if a < minNormal { e.belowNormal += 1 }
                e.exponents[Int(a.exponent) + 149] += 1
            }
        }
        e.count += count
        entries[name] = e
    }

    public func reset() { entries = [:]; order = [] }
    public var ordered: [HeadroomEntry] { order.compactMap { entries[$0] } }
}
