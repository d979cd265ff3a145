// LayerNorm (SPEC §2.6): no affine, eps 1e-6. x [..., W] -> y [..., W], row-wise (rows in
// ranges over the cores; each row's sums in ascending i).
public enum LayerNorm {
    public struct Saved<T: RefScalar>: Sendable { public var mean: [T]; public var rstd: [T] }   // [R]

    /// y = (x - mean) / sqrt(var + eps), var the biased variance of the row.
    public static func forward<T: RefScalar>(_ x: Tensor<T>, eps: T = T(1e-6)) -> (y: Tensor<T>, saved: Saved<T>) {
        let W = x.lastDim, R = x.rows
        var y = x, mean = [T](repeating: 0, count: R), rstd = mean
        x.data.withUnsafeBufferPointer { xb in y.data.withUnsafeMutableBufferPointer { yb in
            mean.withUnsafeMutableBufferPointer { mb in rstd.withUnsafeMutableBufferPointer { sb in
                let io = UncheckedBox((xb.baseAddress!, yb.baseAddress!, mb.baseAddress!, sb.baseAddress!))
                Parallel.ranges(R, minimum: max(1, (1 << 14) / max(W, 1))) { lo, hi in
                    let (x, y, mean, rstd) = io.value
                    for r in lo..<hi {
                        var m: T = 0
                        for i in 0..<W { m += x[r * W + i] }
                        m /= T(W)
                        var v: T = 0
                        for i in 0..<W { let d = x[r * W + i] - m; v += d * d }
                        v /= T(W)
                        let s = 1 / (v + eps).squareRoot()
                        for i in 0..<W { y[r * W + i] = (x[r * W + i] - m) * s }
                        mean[r] = m; rstd[r] = s
                    }
                }
            } }
        } }
        return (y, Saved(mean: mean, rstd: rstd))
    }

    /// dx += rstd (dy - mean(dy) - xhat mean(dy xhat))
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, saved: Saved<T>, dx: inout Tensor<T>) {
        let W = x.lastDim, R = x.rows
        dy.data.withUnsafeBufferPointer { gb in x.data.withUnsafeBufferPointer { xb in dx.data.withUnsafeMutableBufferPointer { db in
            saved.mean.withUnsafeBufferPointer { mb in saved.rstd.withUnsafeBufferPointer { sb in
                let io = UncheckedBox((gb.baseAddress!, xb.baseAddress!, db.baseAddress!, mb.baseAddress!, sb.baseAddress!))
                Parallel.ranges(R, minimum: max(1, (1 << 14) / max(W, 1))) { lo, hi in
                    let (dy, x, dx, mean, rstd) = io.value
                    for r in lo..<hi {
                        let m = mean[r], s = rstd[r]
                        var mdy: T = 0, mdyx: T = 0
                        for i in 0..<W {
                            let g = dy[r * W + i]
                            mdy += g; mdyx += g * (x[r * W + i] - m) * s
                        }
                        mdy /= T(W); mdyx /= T(W)
                        for i in 0..<W {
                            let xh = (x[r * W + i] - m) * s
                            dx[r * W + i] += s * (dy[r * W + i] - mdy - xh * mdyx)
                        }
                    }
                }
            } }
        } } }
    }
}
