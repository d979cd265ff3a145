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
        if recordHeadroom {
            var e = entries[name] ?? HeadroomEntry(name: name)
            if entries[name] == nil { order.append(name) }
            for i in 0..<count {
                let v = p[i]
                if !v.isFinite { e.nonFinite += 1; continue }
                let a = abs(v)
                if a > e.maxAbs { e.maxAbs = a }
                if a != 0 { e.nonZero += 1; if a < minNormal { e.belowNormal += 1 } }
            }
            e.count += count
            entries[name] = e
        }
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

    public func reset() { entries = [:]; order = [] }
    public var ordered: [HeadroomEntry] { order.compactMap { entries[$0] } }
}
