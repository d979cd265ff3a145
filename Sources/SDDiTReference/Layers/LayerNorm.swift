// LayerNorm (SPEC §2.6): no affine, eps 1e-6. x [..., W] -> y [..., W], row-wise.
public enum LayerNorm {
    public struct Saved<T: RefScalar>: Sendable { public var mean: [T]; public var rstd: [T] }   // [R]

    /// y = (x - mean) / sqrt(var + eps), var the biased variance of the row.
    public static func forward<T: RefScalar>(_ x: Tensor<T>, eps: T = T(1e-6)) -> (y: Tensor<T>, saved: Saved<T>) {
        let W = x.lastDim, R = x.rows
        var y = x, mean = [T](repeating: 0, count: R), rstd = mean
        for r in 0..<R {
            var m: T = 0
            for i in 0..<W { m += x.data[r * W + i] }
            m /= T(W)
            var v: T = 0
            for i in 0..<W { let d = x.data[r * W + i] - m; v += d * d }
            v /= T(W)
            let s = 1 / (v + eps).squareRoot()
            for i in 0..<W { y.data[r * W + i] = (x.data[r * W + i] - m) * s }
            mean[r] = m; rstd[r] = s
        }
        return (y, Saved(mean: mean, rstd: rstd))
    }

    /// dx += rstd (dy - mean(dy) - xhat mean(dy xhat))
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, saved: Saved<T>, dx: inout Tensor<T>) {
        let W = x.lastDim, R = x.rows
        for r in 0..<R {
            let m = saved.mean[r], s = saved.rstd[r]
            var mdy: T = 0, mdyx: T = 0
            for i in 0..<W {
                let g = dy.data[r * W + i]
                mdy += g; mdyx += g * (x.data[r * W + i] - m) * s
            }
            mdy /= T(W); mdyx /= T(W)
            for i in 0..<W {
                let xh = (x.data[r * W + i] - m) * s
                dx.data[r * W + i] += s * (dy.data[r * W + i] - mdy - xh * mdyx)
            }
        }
    }
}
