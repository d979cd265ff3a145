import SDDiTCore

// Typed parameter references: a layer resolves its tensors by key once, when it is bound to
// a model's tables (`bind`), and holds them as fields; the forward and backward read fields.

/// A Linear's weight [O, I] and bias [O] (nil: none), or their gradients.
struct LinearParameters {
    let weight: FT, bias: FT?
}

/// float32 tensors by parameter key: a model's student, its teacher, or the student's gradients.
public typealias TensorTable = [String: FT]

extension Dictionary where Key == String, Value == FT {
    /// The tensor `key`. Every key a layer asks for comes from the config's parameter list, so
    /// a missing one is a bug in the fast path, reported by name.
    func tensor(_ key: String) -> FT {
        guard let t = self[key] else { preconditionFailure("fast path: the model holds no tensor '\(key)'") }
        return t
    }
    /// `prefix + "weight"` and `prefix + "bias"`.
    func linear(_ prefix: String, bias: Bool = true) -> LinearParameters {
        LinearParameters(weight: tensor(prefix + "weight"), bias: bias ? tensor(prefix + "bias") : nil)
    }
}

/// A layer with parameters: `bind` resolves them (and their gradients: nil for the teacher, a
/// model without gradients, or while a streamed step holds none) from the model's tables.
protocol FastParameterized: AnyObject {
    func bind(_ P: TensorTable, gradients G: TensorTable?)
}

extension Kernels {
    /// y = x W^T + b with a Linear's parameters.
    func linear(_ x: FT, _ p: LinearParameters, _ y: FT) { linear(x, p.weight, p.bias, y) }
    /// dx += dy W; its gradients (nil: none to accumulate) dW += dy^T x, db += sum dy.
    func linearBackward(_ dy: FT, _ x: FT, _ p: LinearParameters, dx: FT?, _ g: LinearParameters?) {
        linearBackward(dy, x, p.weight, dx: dx, dw: g?.weight, db: g?.bias)
    }
}
