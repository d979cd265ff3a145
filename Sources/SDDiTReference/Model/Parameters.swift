// Parameter and gradient stores keyed by PyTorch state_dict strings (SPEC §7).

/// Named tensors: student or teacher parameters. Keys follow `ModelConfig.studentParameters`.
public struct Parameters<T: RefScalar>: Sendable {
    public var tensors: [String: Tensor<T>]
    public init(_ tensors: [String: Tensor<T>] = [:]) { self.tensors = tensors }

    public subscript(key: String) -> Tensor<T> {
        get {
            guard let t = tensors[key] else { preconditionFailure("missing parameter '\(key)'") }
            return t
        }
        set { tensors[key] = newValue }
        _modify {   // in place: `P[k].data[i] += x` must not copy the tensor
            guard tensors[key] != nil else { preconditionFailure("missing parameter '\(key)'") }
            yield &tensors[key]!
        }
    }

    public func converted<U: RefScalar>(to: U.Type = U.self) -> Parameters<U> {
        Parameters<U>(tensors.mapValues { $0.converted(to: U.self) })
    }

    /// The subset of `specs`' keys (e.g. the teacher's encoder + head).
    public func subset(_ specs: [ParameterSpec]) -> Parameters {
        Parameters(Dictionary(uniqueKeysWithValues: specs.map { ($0.key, self[$0.key]) }))
    }
}

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
