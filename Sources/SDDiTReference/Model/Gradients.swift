// The reference's gradient store, keyed like `Parameters`.

/// One mutable gradient tensor per key. Each lives in its own box so that two gradients
/// can be passed `inout` to one backward call without overlapping access.
public final class GradientBox<T: RefScalar> {
    public var value: Tensor<T>
    public init(_ v: Tensor<T>) { value = v }
}

public struct Gradients<T: RefScalar> {
    var boxes: [String: GradientBox<T>] = [:]

    /// Zeroed gradients for every trainable parameter of `specs`.
    public init(_ specs: [ParameterSpec]) {
        for s in specs where !s.frozen { boxes[s.key] = GradientBox(.zeros(s.shape)) }
    }

    public subscript(key: String) -> GradientBox<T> {
        guard let b = boxes[key] else { preconditionFailure("no gradient for '\(key)'") }
        return b
    }

    public var tensors: [String: Tensor<T>] { boxes.mapValues { $0.value } }
}
