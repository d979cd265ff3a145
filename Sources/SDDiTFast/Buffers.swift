// Float32 buffers for the fast path: raw, row-major, allocated once by name and reused
// across steps (shapes repeat from step to step).

/// `capacity` floats, zeroed at allocation, freed when the last reference (a workspace
/// entry or an FT) goes: memory cannot be freed under a live view.
final class FloatStorage {
    let p: UnsafeMutablePointer<Float>
    let capacity: Int
    init(capacity n: Int) {
        p = UnsafeMutablePointer<Float>.allocate(capacity: n)
        p.initialize(repeating: 0, count: n)
        capacity = n
    }
    deinit { p.deallocate() }
}

/// A view of a float32 buffer with a shape; it keeps its storage alive.
public struct FT {
    public let p: UnsafeMutablePointer<Float>
    public let shape: [Int]
    let storage: FloatStorage
    init(_ storage: FloatStorage, shape: [Int]) {
        precondition(shape.reduce(1, *) <= storage.capacity, "FT: shape \(shape) exceeds its storage")
        self.storage = storage; p = storage.p; self.shape = shape
    }
    /// The same memory under another shape of at most as many elements.
    func reshaped(_ shape: [Int]) -> FT { FT(storage, shape: shape) }
    public var count: Int { shape.reduce(1, *) }
    public var last: Int { shape.last ?? 1 }
    public var rows: Int { count / max(last, 1) }
    public func zero() { p.update(repeating: 0, count: count) }
    public func array() -> [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
    public func copy(from a: [Float]) { a.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: Swift.min(count, a.count)) } }
}

/// Named buffers kept across steps; asking again for a name returns the same memory when
/// the size fits. A larger request replaces the entry: the old storage lives on while an FT
/// still refers to it.
public final class Workspace {
    private var store: [String: FloatStorage] = [:]
    /// Bytes of the storage the workspace holds (its current entries).
    public private(set) var bytes = 0
    public init() {}

    /// Drops the entries whose names `drop` selects (their storage is freed once no FT refers to it).
    public func release(where drop: (String) -> Bool) {
        for (name, s) in store where drop(name) { bytes -= s.capacity * 4; store[name] = nil }
    }

    public func get(_ name: String, _ shape: [Int], zero: Bool = false) -> FT {
        let n = Swift.max(shape.reduce(1, *), 1)
        if let s = store[name], s.capacity >= n {
            let t = FT(s, shape: shape)
            if zero { t.zero() }
            return t
        }
        if let old = store[name] { bytes -= old.capacity * 4 }
        let s = FloatStorage(capacity: n)
        store[name] = s; bytes += n * 4
        return FT(s, shape: shape)
    }
}
