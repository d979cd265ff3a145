// Gated residual of adaLN-Zero (SPEC §2.6): y = x + gate * h.
// x, h [N, L, W]; gate [N, W] broadcast over tokens.
public enum GatedResidual {
    public static func forward<T: RefScalar>(_ x: Tensor<T>, gate: Tensor<T>, _ h: Tensor<T>) -> Tensor<T> {
        let N = x.shape[0], W = x.lastDim, L = x.count / (N * W)
        var y = x
        for n in 0..<N { for l in 0..<L { for i in 0..<W {
            let j = (n * L + l) * W + i
            y.data[j] += gate.data[n * W + i] * h.data[j]
        } } }
        return y
    }

    /// dx += dy;  dh += gate dy;  dgate[n] += sum_l dy h
    public static func backward<T: RefScalar>(dy: Tensor<T>, gate: Tensor<T>, h: Tensor<T>,
                                              dx: inout Tensor<T>, dgate: inout Tensor<T>, dh: inout Tensor<T>) {
        let N = h.shape[0], W = h.lastDim, L = h.count / (N * W)
        for n in 0..<N { for l in 0..<L { for i in 0..<W {
            let j = (n * L + l) * W + i, g = dy.data[j]
            dx.data[j] += g
            dh.data[j] += gate.data[n * W + i] * g
            dgate.data[n * W + i] += g * h.data[j]
        } } }
    }
}
