// The reference's gradient store, keyed like `Parameters`.

/// One mutable gradient tensor per key. Each lives in its own box so that two gradients
/// can be passed `inout` to one backward call without overlapping access. Its zeros are
/// allocated at the first contribution; once handed over as final (`Gradients.finished`) the
/// box is released, and touching it again traps (a part declared final too early).
public final class GradientBox<T: RefScalar> {
    let key: String, shape: [Int]
    var storage: Tensor<T>? = nil
    private(set) var released = false
    init(key: String, shape: [Int]) { self.key = key; self.shape = shape }
    public convenience init(_ v: Tensor<T>) { self.init(key: "", shape: v.shape); storage = v }

    public var value: Tensor<T> {
        get { check(); return storage ?? .zeros(shape) }
        set { check(); storage = newValue }
        _modify {
            check()
            if storage == nil { storage = .zeros(shape) }
            yield &storage!
        }
    }
    private func check() {
        if released { preconditionFailure("gradient '\(key)' used after it was handed over as final") }
    }
    func release() { storage = nil; released = true }
}

public struct Gradients<T: RefScalar> {
    var boxes: [String: GradientBox<T>] = [:]
    /// Receives each gradient of a part whose backward is done (`finished`), which is then
    /// released: a streamed step holds only the gradients still accumulating.
    var onFinal: ((String, Tensor<T>) -> Void)? = nil

    /// Gradients for every trainable parameter of `specs` (zeros until first touched).
    public init(_ specs: [ParameterSpec]) {
        for s in specs where !s.frozen { boxes[s.key] = GradientBox(key: s.key, shape: s.shape) }
    }

    public subscript(key: String) -> GradientBox<T> {
        guard let b = boxes[key] else { preconditionFailure("no gradient for '\(key)'") }
        return b
    }

    /// The backward of every parameter under `prefix` ("blocks.3.", "head.") is done: each is
    /// handed to `onFinal` (in key order) and released. Without `onFinal`, nothing happens.
    func finished(_ prefix: String) {
        guard let onFinal else { return }
        for key in boxes.keys.sorted() where key.hasPrefix(prefix) {
            let b = boxes[key]!
            guard !b.released else { continue }
            onFinal(key, b.value)
            b.release()
        }
    }

    /// The gradients not yet handed over.
    public var tensors: [String: Tensor<T>] { boxes.filter { !$0.value.released }.mapValues { $0.value } }
}
