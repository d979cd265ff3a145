import RealModule

// The scalar types every spec formula is written over (SPEC is exact math; the types only
// decide the rounding).

/// The scalar types the reference runs in: Double is the truth, Float80 checks it.
/// `Real` (swift-numerics) gives exp, log, tanh and erf generically.
public protocol RefScalar: Real, BinaryFloatingPoint, Sendable {}
extension Double: RefScalar {}
extension Float: RefScalar {}
#if arch(x86_64) || arch(i386)
extension Float80: RefScalar {}
#endif

extension Tensor where T: RefScalar {
    /// Element-wise conversion between scalar types (Double <-> Float80).
    /// The same values in U; in its own type, the tensor itself (copy-on-write shares the
    /// storage: an S/2 or larger parameter set is not duplicated for nothing).
    public func converted<U: RefScalar>(to: U.Type = U.self) -> Tensor<U> {
        if U.self == T.self { return unsafeBitCast(self, to: Tensor<U>.self) }
        return map { U($0) }
    }

    public static func += (a: inout Tensor, b: Tensor) {
        precondition(a.count == b.count, "+=: \(a.shape) vs \(b.shape)")
        for i in 0..<a.count { a.data[i] += b.data[i] }
    }
}
