import COpenBLAS
import Dispatch
import Glibc

// Matrix products: every product of the fast path is OpenBLAS sgemm on fixed tiles
// (`sgemmTiles`), single-threaded per tile; half modes round the operands and the product
// (float32 accumulation), TF32 the operands. Linear layers are products plus a bias.

/// The fast path's kernels over one workspace (scratch for rounded operand copies) in one
/// precision mode: products and Linear here, LayerNorm / residual / activations in
/// LayerKernels.swift, attention in AttentionKernels.swift, half-type rounding in
/// HalfRoundingKernels.swift. Public so that SDDiTFastTests can hold each kernel against its
/// reference layer.
public struct Kernels {
    public let prec: FastPrecision
    let ws: Workspace
    public init(prec: FastPrecision, ws: Workspace) { self.prec = prec; self.ws = ws }

    /// C[M,N] = alpha op(A) op(B) (+ C when accumulate). Row-major; lda/ldb/ldc are row strides.
    /// Half modes: operands rounded to the half type, float32 accumulation, the product
    /// rounded to the half type before it is stored (or added). TF32: operands rounded to
    /// TF32, the float32 product stored as it is. `serial`: one thread (for
    /// calls from inside a `parallelTasks` worker); the bits are the same either way only
    /// when the call site's choice is fixed, which it is (see `sgemmTiled`).
    func gemm(_ ta: Bool, _ tb: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
              _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
              _ C: UnsafeMutablePointer<Float>, _ ldc: Int, accumulate: Bool, scratch: String = "gemm", serial: Bool = false) {
        if prec == .fp32 {
            sgemmTiled(ta, tb, M, N, K, alpha, A, lda, B, ldb, accumulate ? 1 : 0, C, ldc, serial: serial)
            return
        }
        // round operand copies (as stored by rows of their leading dimension)
        let aRows = ta ? K : M, aCols = ta ? M : K, bRows = tb ? N : K, bCols = tb ? K : N
        let a = ws.get(scratch + ".a", [aRows, aCols]), b = ws.get(scratch + ".b", [bRows, bCols])
        copyRounded(a.p, A, rows: aRows, cols: aCols, ld: lda, serial: serial)
        copyRounded(b.p, B, rows: bRows, cols: bCols, ld: ldb, serial: serial)
        if prec == .tf32 {   // TF32: float32 accumulation and output
            sgemmTiled(ta, tb, M, N, K, alpha, a.p, aCols, b.p, bCols, accumulate ? 1 : 0, C, ldc, serial: serial)
            return
        }
        let t = ws.get(scratch + ".c", [M, N])
        sgemmTiled(ta, tb, M, N, K, alpha, a.p, aCols, b.p, bCols, 0, t.p, N, serial: serial)
        storeRounded(C, ldc, t.p, rows: M, cols: N, accumulate: accumulate, serial: serial)
    }

    /// y[R,O] = x[R,I] W[O,I]^T + b  (bias added after the product; rounded again in half modes).
    /// float32: y is first filled with the bias rows and sgemm accumulates onto it (beta 1),
    /// one pass over y instead of OpenBLAS zeroing it and a second pass adding the bias.
    public func linear(_ x: FT, _ w: FT, _ b: FT?, _ y: FT) {
        let I = x.last, R = x.rows, O = w.shape[0]
        let yp = y.p, prec = self.prec
        if let b, !prec.isHalf {
            let bp = b.p
            parallelRanges(R, minPerThread: Swift.max(1, 16384 / Swift.max(O, 1))) { lo, hi in
                for r in lo..<hi { (yp + r * O).update(from: bp, count: O) }
            }
            gemm(false, true, R, O, I, 1, x.p, I, w.p, I, y.p, O, accumulate: true)
            return
        }
        gemm(false, true, R, O, I, 1, x.p, I, w.p, I, y.p, O, accumulate: false)
        if let b {
            let bp = b.p
            parallelRanges(R, minPerThread: Swift.max(1, 16384 / Swift.max(O, 1))) { lo, hi in
                for r in lo..<hi { for o in 0..<O { yp[r * O + o] += bp[o] } }
                if prec.isHalf { roundHalfSerial(yp + lo * O, (hi - lo) * O) }
            }
        }
    }

    /// dx += dy W;  dW += dy^T x;  db += sum_r dy  (each optional)
    public func linearBackward(_ dy: FT, _ x: FT, _ w: FT, dx: FT?, dw: FT?, db: FT?) {
        let O = dy.last, R = dy.rows, I = x.last
        if let dx { gemm(false, false, R, I, O, 1, dy.p, O, w.p, I, dx.p, I, accumulate: true) }
        if let dw { gemm(true, false, O, I, R, 1, dy.p, O, x.p, I, dw.p, I, accumulate: true) }
        if let db {   // split by columns: each column's sum keeps its order
            let dbp = db.p, dyp = dy.p
            parallelRanges(O, minPerThread: Swift.max(16, 16384 / Swift.max(R, 1))) { lo, hi in
                for r in 0..<R { for o in lo..<hi { dbp[o] += dyp[r * O + o] } }
            }
        }
    }
}

/// The partition of C[M, N] into tiles for `sgemmTiled`: a function of (M, N, K) alone, never
/// of the thread count. Up to 4 tiles of at least 2^21 multiply-adds each, along the longer
/// of M and N, boundaries on multiples of 16 (whole microkernel panels), tiles >= 32 long.
/// (Each tile packs the whole other operand again: on the S/2 training step, 2 cores, 4 tiles
/// measured 4132-4405 ms, 8 tiles 4315-4547 ms, 2 tiles 4248-4456 ms.)
/// Returns the tile boundaries along that side and whether it is M.
func sgemmTiles(_ M: Int, _ N: Int, _ K: Int) -> (rows: Bool, bounds: [Int]) {
    let work = Double(M) * Double(N) * Double(K), rows = M >= N, side = rows ? M : N
    var t = 1
    while t < 4, work / Double(2 * t) >= Double(1 << 21), side / (2 * t) >= 32 { t *= 2 }
    var bounds = [0]
    for i in 1..<t { bounds.append((side * i / t) / 16 * 16) }
    bounds.append(side)
    return (rows, bounds)
}

/// C = alpha op(A) op(B) + beta C (row-major), computed tile by tile: each tile of the fixed
/// partition `sgemmTiles(M, N, K)` is one single-threaded OpenBLAS call over the whole K, and
/// the tiles are spread over the fast path's threads. OpenBLAS's own threading is off for good
/// (`FastThreads`): an output element's sum over K is then the same whatever the thread
/// count, whichever worker runs its tile, and whatever else runs in the process.
func sgemmTiled(_ ta: Bool, _ tb: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
                _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int, _ beta: Float,
                _ C: UnsafeMutablePointer<Float>, _ ldc: Int, serial: Bool = false) {
    FastThreads.ensureSingleThreadedBLAS()
    guard M > 0, N > 0 else { return }
    let (rows, bounds) = sgemmTiles(M, N, K), tiles = bounds.count - 1
    let oa = ta ? CblasTrans : CblasNoTrans, ob = tb ? CblasTrans : CblasNoTrans
    func tile(_ i: Int) {
        let lo = bounds[i], n = bounds[i + 1] - lo
        if rows {   // rows lo..<lo+n of op(A) and C
            cblas_sgemm(CblasRowMajor, oa, ob, Int32(n), Int32(N), Int32(K), alpha, A + (ta ? lo : lo * lda), Int32(lda),
                        B, Int32(ldb), beta, C + lo * ldc, Int32(ldc))
        } else {    // columns lo..<lo+n of op(B) and C
            cblas_sgemm(CblasRowMajor, oa, ob, Int32(M), Int32(n), Int32(K), alpha, A, Int32(lda),
                        B + (tb ? lo * ldb : lo), Int32(ldb), beta, C + lo, Int32(ldc))
        }
    }
    if tiles == 1 || serial || FastThreads.workers == 1 { for i in 0..<tiles { tile(i) }; return }
    withoutActuallyEscaping(tile) { t in
        let box = UncheckedSendable(t)
        DispatchQueue.concurrentPerform(iterations: tiles) { i in box.value(i) }
    }
}
