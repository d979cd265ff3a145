import COpenBLAS
import Glibc

// The fast path's kernels: OpenBLAS sgemm for every matrix product, fused element-wise loops.
// Half modes round matmul operands and outputs to fp16/bf16 (float32 accumulation).
struct Kernels {
    let prec: FastPrecision
    let ws: Workspace

    /// C[M,N] = alpha op(A) op(B) (+ C when accumulate). Row-major; lda/ldb/ldc are row strides.
    /// Half modes: operands rounded to the half type, float32 accumulation, the product
    /// rounded to the half type before it is stored (or added).
    func gemm(_ ta: Bool, _ tb: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
              _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
              _ C: UnsafeMutablePointer<Float>, _ ldc: Int, accumulate: Bool, scratch: String = "gemm") {
        if !prec.isHalf {
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), accumulate ? 1 : 0, C, Int32(ldc))
            return
        }
        // round operand copies (as stored by rows of their leading dimension)
        let aRows = ta ? K : M, aCols = ta ? M : K, bRows = tb ? N : K, bCols = tb ? K : N
        let a = ws.get(scratch + ".a", [aRows, aCols]), b = ws.get(scratch + ".b", [bRows, bCols])
        for r in 0..<aRows { for c in 0..<aCols { a.p[r * aCols + c] = prec.round(A[r * lda + c]) } }
        for r in 0..<bRows { for c in 0..<bCols { b.p[r * bCols + c] = prec.round(B[r * ldb + c]) } }
        let t = ws.get(scratch + ".c", [M, N])
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    Int32(M), Int32(N), Int32(K), alpha, a.p, Int32(aCols), b.p, Int32(bCols), 0, t.p, Int32(N))
        for r in 0..<M { for c in 0..<N {
            let v = prec.round(t.p[r * N + c])
            if accumulate { C[r * ldc + c] += v } else { C[r * ldc + c] = v }
        } }
    }

    /// y[R,O] = x[R,I] W[O,I]^T + b  (bias added after the product; rounded again in half modes)
    func linear(_ x: FT, _ w: FT, _ b: FT?, _ y: FT) {
        let I = x.last, R = x.rows, O = w.shape[0]
        gemm(false, true, R, O, I, 1, x.p, I, w.p, I, y.p, O, accumulate: false)
        if let b {
            for r in 0..<R { for o in 0..<O { y.p[r * O + o] += b.p[o] } }
            if prec.isHalf { prec.round(y.p, R * O) }
        }
    }

    /// dx += dy W;  dW += dy^T x;  db += sum_r dy  (each optional)
    func linearBackward(_ dy: FT, _ x: FT, _ w: FT, dx: FT?, dw: FT?, db: FT?) {
        let O = dy.last, R = dy.rows, I = x.last
        if let dx { gemm(false, false, R, I, O, 1, dy.p, O, w.p, I, dx.p, I, accumulate: true) }
        if let dw { gemm(true, false, O, I, R, 1, dy.p, O, x.p, I, dw.p, I, accumulate: true) }
        if let db {
            for r in 0..<R { for o in 0..<O { db.p[o] += dy.p[r * O + o] } }
        }
    }

    /// Fused LayerNorm (no affine, eps 1e-6) + modulate: y = xhat (1 + scale[n]) + shift[n].
    /// shift/scale are rows of `mod` [N, k W] at chunk offsets; mean/rstd saved per row.
    func lnModulate(_ x: FT, _ mod: FT, shiftChunk: Int, scaleChunk: Int, chunks: Int,
                    _ y: FT, mean: FT, rstd: FT) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        for r in 0..<R {
            let n = r / L, xp = x.p + r * W, yp = y.p + r * W
            var m: Float = 0
            for i in 0..<W { m += xp[i] }
            m /= Float(W)
            var v: Float = 0
            for i in 0..<W { let d = xp[i] - m; v += d * d }
            v /= Float(W)
            let s = 1 / (v + 1e-6).squareRoot()
            mean.p[r] = m; rstd.p[r] = s
            let sh = mod.p + n * chunks * W + shiftChunk * W, sc = mod.p + n * chunks * W + scaleChunk * W
            for i in 0..<W { yp[i] = (xp[i] - m) * s * (1 + sc[i]) + sh[i] }
        }
    }

    /// Backward of lnModulate: dx += ..., dmod[shift] += sum dy, dmod[scale] += sum dy xhat.
    func lnModulateBackward(_ dy: FT, _ x: FT, _ mod: FT, shiftChunk: Int, scaleChunk: Int, chunks: Int,
                            mean: FT, rstd: FT, dx: FT, dmod: FT) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        for r in 0..<R {
            let n = r / L, xp = x.p + r * W, g = dy.p + r * W, dxp = dx.p + r * W
            let sc = mod.p + n * chunks * W + scaleChunk * W
            let dsh = dmod.p + n * chunks * W + shiftChunk * W, dsc = dmod.p + n * chunks * W + scaleChunk * W
            let m = mean.p[r], s = rstd.p[r]
            var a: Float = 0, b: Float = 0
            for i in 0..<W {
                let xh = (xp[i] - m) * s, gh = g[i] * (1 + sc[i])
                dsh[i] += g[i]; dsc[i] += g[i] * xh
                a += gh; b += gh * xh
            }
            a /= Float(W); b /= Float(W)
            for i in 0..<W {
                let xh = (xp[i] - m) * s
                dxp[i] += s * (g[i] * (1 + sc[i]) - a - xh * b)
            }
        }
    }

    /// y = x + gate[n] h  (gate a chunk of mod)
    func gatedResidual(_ x: FT, _ mod: FT, chunk: Int, chunks: Int, _ h: FT, _ y: FT) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        for r in 0..<R {
            let gt = mod.p + (r / L) * chunks * W + chunk * W
            for i in 0..<W { y.p[r * W + i] = x.p[r * W + i] + gt[i] * h.p[r * W + i] }
        }
    }

    /// dx += dy (when dx is not dy itself);  dh = gate dy;  dgate += sum dy h
    func gatedResidualBackward(_ dy: FT, _ mod: FT, chunk: Int, chunks: Int, _ h: FT, dh: FT, dmod: FT) {
        let W = dy.last, R = dy.rows, N = mod.shape[0], L = R / N
        for r in 0..<R {
            let base = (r / L) * chunks * W + chunk * W
            for i in 0..<W {
                let g = dy.p[r * W + i]
                dh.p[r * W + i] = mod.p[base + i] * g
                dmod.p[base + i] += g * h.p[r * W + i]
            }
        }
    }

    /// GELU, tanh approximation.
    func geluTanh(_ x: FT, _ y: FT) {
        let c: Float = 0.7978845608028654, a: Float = 0.044715
        for i in 0..<x.count { let v = x.p[i]; y.p[i] = 0.5 * v * (1 + tanhf(c * (v + a * v * v * v))) }
        prec.round(y.p, y.count)
    }
    func geluTanhBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        let c: Float = 0.7978845608028654, a: Float = 0.044715
        for i in 0..<x.count {
            let v = x.p[i], t = tanhf(c * (v + a * v * v * v))
            dx.p[i] = dy.p[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * a * v * v))
        }
        prec.round(dx.p, dx.count)
    }
    /// GELU, exact (erf).
    func geluErf(_ x: FT, _ y: FT) {
        for i in 0..<x.count { let v = x.p[i]; y.p[i] = 0.5 * v * (1 + erff(v * 0.70710678118654752)) }
        prec.round(y.p, y.count)
    }
    func geluErfBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        for i in 0..<x.count {
            let v = x.p[i]
            dx.p[i] = dy.p[i] * (0.5 * (1 + erff(v * 0.70710678118654752)) + v * 0.3989422804014327 * expf(-0.5 * v * v))
        }
        prec.round(dx.p, dx.count)
    }
    func silu(_ x: FT, _ y: FT) { for i in 0..<x.count { let v = x.p[i]; y.p[i] = v / (1 + expf(-v)) } }
    func siluBackward(_ dy: FT, _ x: FT, _ dx: FT, accumulate: Bool) {
        for i in 0..<x.count {
            let v = x.p[i], s = 1 / (1 + expf(-v)), d = dy.p[i] * s * (1 + v * (1 - s))
            if accumulate { dx.p[i] += d } else { dx.p[i] = d }
        }
    }
}

