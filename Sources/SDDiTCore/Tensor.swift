// A dense row-major tensor: `shape` in PyTorch order, `data` C-contiguous.
public struct Tensor<T: Sendable>: Sendable {
    public var shape: [Int]
    public var data: [T]

    public init(shape: [Int], data: [T]) {
        precondition(shape.reduce(1, *) == data.count,
                     "Tensor: shape \(shape) needs \(shape.reduce(1, *)) elements, got \(data.count)")
        self.shape = shape
        self.data = data
    }

    public init(shape: [Int], repeating value: T) {
        self.shape = shape
        self.data = Array(repeating: value, count: shape.reduce(1, *))
    }

    public var count: Int { data.count }
    public var rank: Int { shape.count }
    /// Size of the last axis (the feature axis for row-wise layers).
    public var lastDim: Int { shape.last ?? 1 }
    /// Product of all axes but the last: the number of rows a row-wise layer sees.
    public var rows: Int { lastDim == 0 ? 0 : count / lastDim }

    public subscript(i: Int) -> T {
        get { data[i] }
        set { data[i] = newValue }
    }

    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, data: data)
    }

    public func map<U>(_ f: (T) throws -> U) rethrows -> Tensor<U> {
        Tensor<U>(shape: shape, data: try data.map(f))
    }
}

extension Tensor where T: Numeric {
    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(shape: shape, repeating: 0) }
    public static func zeros(like t: Tensor) -> Tensor { Tensor(shape: t.shape, repeating: 0) }
}

/// Multi-index of flat offset `i` in a row-major tensor of `shape`.
public func unravel(_ i: Int, _ shape: [Int]) -> [Int] {
    var idx = Array(repeating: 0, count: shape.count)
    var r = i
    for d in stride(from: shape.count - 1, through: 0, by: -1) where shape[d] > 0 {
        idx[d] = r % shape[d]
        r /= shape[d]
    }
    return idx
}
