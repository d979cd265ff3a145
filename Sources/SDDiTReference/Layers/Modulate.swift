// modulate(h, shift, scale) = h (1 + scale) + shift (SPEC §2.6, DiT's one-liner).
// h [N, L, W]; shift, scale [N, W] broadcast over the L tokens of sample n.
public enum Modulate {
    public static func forward<T: RefScalar>(_ h: Tensor<T>, shift: Tensor<T>, scale: Tensor<T>) -> Tensor<T> {
        let N = h.shape[0], W = h.lastDim, L = h.count / (N * W)
        var y = h
        for n in 0..<N { for l in 0..<L { for i in 0..<W {
            let j = (n * L + l) * W + i
            y.data[j] = h.data[j] * (1 + scale.data[n * W + i]) + shift.data[n * W + i]
        } } }
        return y
    }

    /// dh += dy (1 + scale);  dshift[n] += sum_l dy;  dscale[n] += sum_l dy h
    public static func backward<T: RefScalar>(dy: Tensor<T>, h: Tensor<T>, scale: Tensor<T>,
                                              dh: inout Tensor<T>, dshift: inout Tensor<T>, dscale: inout Tensor<T>) {
        let N = h.shape[0], W = h.lastDim, L = h.count / (N * W)
        for n in 0..<N { for l in 0..<L { for i in 0..<W {
            let j = (n * L + l) * W + i, g = dy.data[j]
            dh.data[j] += g * (1 + scale.data[n * W + i])
            dshift.data[n * W + i] += g
            dscale.data[n * W + i] += g * h.data[j]
        } } }
    }
}
