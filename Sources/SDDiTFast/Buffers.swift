// Float32 buffers for the fast path: raw, row-major, allocated once by name and reused
// across steps (shapes repeat from step to step).

/// A view of a float32 buffer with a shape.
public struct FT {
    public let p: UnsafeMutablePointer<Float>
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
    public var last: Int { shape.last ?? 1 }
    public var rows: Int { count / max(last, 1) }
    public func zero() { p.update(repeating: 0, count: count) }
    public func array() -> [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
    public func copy(from a: [Float]) { a.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: Swift.min(count, a.count)) } }
}

/// Named buffers kept across steps; asking again for a name returns the same memory when
/// the size fits.
public final class Workspace {
    private var store: [String: (UnsafeMutablePointer<Float>, Int)] = [:]
    public private(set) var bytes = 0
    public init() {}
    deinit { for (p, _) in store.values { p.deallocate() } }

    public func get(_ name: String, _ shape: [Int], zero: Bool = false) -> FT {
        let n = Swift.max(shape.reduce(1, *), 1)
        if let (p, cap) = store[name], cap >= n {
            let t = FT(p: p, shape: shape)
            if zero { t.zero() }
            return t
        }
        if let (old, cap) = store[name] { old.deallocate(); bytes -= cap * 4 }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
        p.initialize(repeating: 0, count: n)
        store[name] = (p, n); bytes += n * 4
        return FT(p: p, shape: shape)
    }
}
