import RealModule

// Attention's products through `Product`, for Double: the same sums, in the same order, as
// Attention.forwardPlain / backwardPlain (Layers/Attention.swift), so the same bits. The
// (sample, head) pairs are spread over the cores; each writes its own P block and its own
// columns of the output, so the thread count changes nothing.
extension Attention {
    static func forwardKernel(_ qkv: Tensor<Double>, heads: Int) -> (Tensor<Double>, [Double]) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.lastDim / 3, hd = W / heads
        let scale = 1 / Double(hd).squareRoot()
        var out = [Double](repeating: 0, count: N * L * W)
        var P = [Double](repeating: 0, count: N * heads * L * L)
        qkv.data.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { o in P.withUnsafeMutableBufferPointer { p in
            let io = UncheckedBox((x.baseAddress!, o.baseAddress!, p.baseAddress!))
            eachHead(N * heads) { nh in
                let n = nh / heads, h = nh % heads, (x, o, p) = io.value
                let q = x + (n * L * 3 + 0) * W + h * hd, k = x + (n * L * 3 + 1) * W + h * hd, v = x + (n * L * 3 + 2) * W + h * hd
                let Pb = p + nh * L * L
                // S[i, j] = sum_d q[i, d] k[j, d]
                Product.run(M: L, N: L, K: hd, A: StridedMatrix(q, rowStride: 3 * W, colStride: 1),
                            B: StridedMatrix(k, rowStride: 1, colStride: 3 * W), start: nil, C: Pb, ldc: L, store: .set, parallel: false)
                for i in 0..<L {
                    let row = Pb + i * L
                    var mx = -Double.infinity
                    for j in 0..<L { row[j] *= scale; mx = max(mx, row[j]) }
                    var z = 0.0
                    for j in 0..<L { let e = Double.exp(row[j] - mx); row[j] = e; z += e }
                    for j in 0..<L { row[j] /= z }
                }
                // out[i, d] = sum_j P[i, j] v[j, d]
                Product.run(M: L, N: hd, K: L, A: StridedMatrix(Pb, rowStride: L, colStride: 1),
                            B: StridedMatrix(v, rowStride: 3 * W, colStride: 1), start: nil,
                            C: o + n * L * W + h * hd, ldc: W, store: .set, parallel: false)
            }
        } } }
        return (Tensor(shape: [N, L, W], data: out), P)
    }

    static func backwardKernel(dy: Tensor<Double>, qkv: Tensor<Double>, heads: Int, probs: [Double], dqkv: inout Tensor<Double>) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.lastDim / 3, hd = W / heads
        let scale = 1 / Double(hd).squareRoot()
        dy.data.withUnsafeBufferPointer { g in qkv.data.withUnsafeBufferPointer { x in probs.withUnsafeBufferPointer { pr in
            dqkv.data.withUnsafeMutableBufferPointer { dx in
                let io = UncheckedBox((g.baseAddress!, x.baseAddress!, pr.baseAddress!, dx.baseAddress!))
                eachHead(N * heads) { nh in
                    let (g, x, pr, dx) = io.value
                    let n = nh / heads, h = nh % heads
                    let off = n * L * 3 * W + h * hd
                    let q = x + off, k = x + off + W, v = x + off + 2 * W
                    let dq = dx + off, dk = dx + off + W, dv = dx + off + 2 * W
                    let dyb = g + n * L * W + h * hd, P = pr + nh * L * L
                    let dS = UnsafeMutablePointer<Double>.allocate(capacity: L * L)
                    defer { dS.deallocate() }
                    // dP[i, j] = sum_d dy[i, d] v[j, d]
                    Product.run(M: L, N: L, K: hd, A: StridedMatrix(dyb, rowStride: W, colStride: 1),
                                B: StridedMatrix(v, rowStride: 1, colStride: 3 * W), start: nil, C: dS, ldc: L, store: .set, parallel: false)
                    // dS = P (dP - rowsum(dP P)) / sqrt(hd)
                    for i in 0..<L {
                        var dot = 0.0
                        for j in 0..<L { dot += dS[i * L + j] * P[i * L + j] }
                        for j in 0..<L { let p = P[i * L + j]; dS[i * L + j] = p * (dS[i * L + j] - dot) * scale }
                    }
                    // dv[j, d] += sum_i P[i, j] dy[i, d];  dk[j, d] += sum_i dS[i, j] q[i, d];  dq[i, d] += sum_j dS[i, j] k[j, d]
                    Product.run(M: L, N: hd, K: L, A: StridedMatrix(P, rowStride: 1, colStride: L),
                                B: StridedMatrix(dyb, rowStride: W, colStride: 1), start: nil, C: dv, ldc: 3 * W, store: .add, parallel: false)
                    Product.run(M: L, N: hd, K: L, A: StridedMatrix(dS, rowStride: 1, colStride: L),
                                B: StridedMatrix(q, rowStride: 3 * W, colStride: 1), start: nil, C: dk, ldc: 3 * W, store: .add, parallel: false)
                    Product.run(M: L, N: hd, K: L, A: StridedMatrix(dS, rowStride: L, colStride: 1),
                                B: StridedMatrix(k, rowStride: 3 * W, colStride: 1), start: nil, C: dq, ldc: 3 * W, store: .add, parallel: false)
                }
            }
        } } }
    }

    /// body(i) for each (sample, head) pair, spread over the cores in fixed contiguous chunks.
    static func eachHead(_ count: Int, _ body: (Int) -> Void) {
        Parallel.ranges(count, minimum: 1) { lo, hi in for i in lo..<hi { body(i) } }
    }
}
