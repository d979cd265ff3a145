// Token bookkeeping (SPEC §2.1, §2.4-2.5, §2.7, §2.9). Pure index maps: backward is the
// transpose (scatter-add of a gather, gather of a scatter).

/// Patchify (SPEC §2.1): x [N, C, H, W] -> [N, T, C p p] (Core's PatchLayout).
public enum Patchify {
    public static func forward<T: RefScalar>(_ x: Tensor<T>, p: Int) -> Tensor<T> {
        let N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
        var out = [T](repeating: 0, count: x.count)
        PatchLayout.patchify(N: N, C: C, H: H, W: W, p: p) { image, token in out[token] = x.data[image] }
        return Tensor(shape: [N, (H / p) * (W / p), C * p * p], data: out)
    }
}

/// Unpatchify (SPEC §2.9): [N, T, p p C] ordered (i, j, c) -> [N, C, H, W] (Core's PatchLayout).
public enum Unpatchify {
    public static func forward<T: RefScalar>(_ x: Tensor<T>, channels C: Int, p: Int) -> Tensor<T> {
        let N = x.shape[0], g = Int(Double(x.shape[1]).squareRoot().rounded()), H = g * p
        var out = [T](repeating: 0, count: N * C * H * H)
        PatchLayout.unpatchify(N: N, C: C, H: H, p: p) { image, token in out[image] = x.data[token] }
        return Tensor(shape: [N, C, H, H], data: out)
    }
    /// dx = patchify in (i, j, c) order of dy
    public static func backward<T: RefScalar>(dy: Tensor<T>, p: Int, dx: inout Tensor<T>) {
        PatchLayout.unpatchify(N: dy.shape[0], C: dy.shape[1], H: dy.shape[2], p: p) { image, token in dx.data[token] += dy.data[image] }
    }
}

/// Visible-token gather (SPEC §2.4): x [N, T, D], keep [N][V] -> [N, V, D].
public enum TokenGather {
    public static func forward<T: RefScalar>(_ x: Tensor<T>, keep: [[Int]]) -> Tensor<T> {
        let N = x.shape[0], Tn = x.shape[1], D = x.lastDim, V = keep.first?.count ?? 0
        var out = [T](); out.reserveCapacity(N * V * D)
        for n in 0..<N { for t in keep[n] { out += x.data[((n * Tn + t) * D)..<((n * Tn + t + 1) * D)] } }
        return Tensor(shape: [N, V, D], data: out)
    }
    /// dx[n, keep[n][v]] += dy[n, v]
    public static func backward<T: RefScalar>(dy: Tensor<T>, keep: [[Int]], dx: inout Tensor<T>) {
        let N = dx.shape[0], Tn = dx.shape[1], D = dx.lastDim, V = dy.shape[1]
        for n in 0..<N { for v in 0..<V { for i in 0..<D {
            dx.data[(n * Tn + keep[n][v]) * D + i] += dy.data[(n * V + v) * D + i]
        } } }
    }
}

/// Decoder-input assembly (SPEC §2.7): H = base with position keep[n][v] replaced by
/// enc[n, v]. base, H [N, T, D]; enc [N, V, D].
public enum TokenScatter {
    public static func forward<T: RefScalar>(base: Tensor<T>, _ enc: Tensor<T>, keep: [[Int]]) -> Tensor<T> {
        let N = base.shape[0], Tn = base.shape[1], D = base.lastDim, V = enc.shape[1]
        var out = base
        for n in 0..<N { for v in 0..<V { for i in 0..<D {
            out.data[(n * Tn + keep[n][v]) * D + i] = enc.data[(n * V + v) * D + i]
        } } }
        return out
    }
    /// dbase += dy at hidden positions;  denc[n, v] += dy[n, keep[n][v]]
    public static func backward<T: RefScalar>(dy: Tensor<T>, keep: [[Int]], dbase: inout Tensor<T>, denc: inout Tensor<T>) {
        let N = dy.shape[0], Tn = dy.shape[1], D = dy.lastDim, V = denc.shape[1]
        for n in 0..<N {
            var visible = [Bool](repeating: false, count: Tn)
            for v in 0..<V {
                visible[keep[n][v]] = true
                for i in 0..<D { denc.data[(n * V + v) * D + i] += dy.data[(n * Tn + keep[n][v]) * D + i] }
            }
            for t in 0..<Tn where !visible[t] {
                for i in 0..<D { dbase.data[(n * Tn + t) * D + i] += dy.data[(n * Tn + t) * D + i] }
            }
        }
    }
}
