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
