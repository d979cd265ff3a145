// Linear (SPEC §2: every nn.Linear, and the patch embedding as a linear map of patches).
// x [..., I] -> y [..., O]; weight [O, I] (PyTorch layout), bias [O].
public enum Linear {
    /// y[r, o] = b[o] + sum_i x[r, i] W[o, i]
    public static func forward<T: RefScalar>(_ x: Tensor<T>, weight w: Tensor<T>, bias b: Tensor<T>?) -> Tensor<T> {
        let I = x.lastDim, R = x.rows, O = w.count / I
        precondition(w.count == O * I, "Linear: weight \(w.shape) does not take input \(x.shape)")
        var y = [T](repeating: 0, count: R * O)
        for r in 0..<R {
            for o in 0..<O {
                var s: T = b?.data[o] ?? 0
                for i in 0..<I { s += x.data[r * I + i] * w.data[o * I + i] }
                y[r * O + o] = s
            }
        }
        return Tensor(shape: Array(x.shape.dropLast()) + [O], data: y)
    }

    /// dx[r, i] += sum_o dy[r, o] W[o, i]
    public static func backwardInput<T: RefScalar>(dy: Tensor<T>, weight w: Tensor<T>, dx: inout Tensor<T>) {
        let O = dy.lastDim, R = dy.rows, I = w.count / O
        for r in 0..<R {
            for i in 0..<I {
                var s: T = 0
                for o in 0..<O { s += dy.data[r * O + o] * w.data[o * I + i] }
                dx.data[r * I + i] += s
            }
        }
    }

    /// dW[o, i] += sum_r dy[r, o] x[r, i];  db[o] += sum_r dy[r, o]
    public static func backwardParams<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dw: inout Tensor<T>, db: inout Tensor<T>?) {
        let O = dy.lastDim, R = dy.rows, I = x.lastDim
        for o in 0..<O {
            for i in 0..<I {
                var s: T = 0
                for r in 0..<R { s += dy.data[r * O + o] * x.data[r * I + i] }
                dw.data[o * I + i] += s
            }
        }
        if db != nil {
            for o in 0..<O {
                var s: T = 0
                for r in 0..<R { s += dy.data[r * O + o] }
                db!.data[o] += s
            }
        }
    }
}
