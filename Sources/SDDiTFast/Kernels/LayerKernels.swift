import CFastKernels
import Glibc

// Element-wise and row-wise layer kernels: fused LayerNorm + modulate, the gated residual,
// GELU (tanh and exact), SiLU; each forward beside its backward. Rows are split over the fast
// path's threads (`parallelRanges`); no result depends on the split.
extension Kernels {
    /// Fused LayerNorm (no affine, eps 1e-6) + modulate: y = xhat (1 + scale[n]) + shift[n].
    /// shift/scale are rows of `mod` [N, k W] at chunk offsets; mean/rstd saved per row.
    public func lnModulate(_ x: FT, _ mod: FT, shiftChunk: Int, scaleChunk: Int, chunks: Int,
                    _ y: FT, mean: FT, rstd: FT, eps: Float = 1e-6) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        parallelRanges(R, minPerThread: Swift.max(1, 16384 / Swift.max(W, 1))) { lo, hi in
            for r in lo..<hi {
                let n = r / L, xp = x.p + r * W, yp = y.p + r * W
                let m = vsum(xp, W) / Float(W)
                let v = vsumSquaredDeviation(xp, W, m) / Float(W)
                let s = 1 / (v + eps).squareRoot()
                mean.p[r] = m; rstd.p[r] = s
                let sh = mod.p + n * chunks * W + shiftChunk * W, sc = mod.p + n * chunks * W + scaleChunk * W
                for i in 0..<W { yp[i] = (xp[i] - m) * s * (1 + sc[i]) + sh[i] }
            }
        }
        if let e = KernelPerturbation.layernorm { for i in 0..<y.count { y.p[i] *= 1 + e } }
    }

    /// Backward of lnModulate: dx += ..., dmod[shift] += sum dy, dmod[scale] += sum dy xhat.
    public func lnModulateBackward(_ dy: FT, _ x: FT, _ mod: FT, shiftChunk: Int, scaleChunk: Int, chunks: Int,
                            mean: FT, rstd: FT, dx: FT, dmod: FT) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        // split by sample: dmod's rows are per sample, so each keeps its order of additions
        parallelRanges(N, minPerThread: Swift.max(1, 16384 / Swift.max(L * W, 1))) { n0, n1 in
            for r in (n0 * L)..<(n1 * L) {
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
    }

    /// y = x + gate[n] h  (gate a chunk of mod)
    public func gatedResidual(_ x: FT, _ mod: FT, chunk: Int, chunks: Int, _ h: FT, _ y: FT) {
        let W = x.last, R = x.rows, N = mod.shape[0], L = R / N
        parallelRanges(R, minPerThread: Swift.max(1, 16384 / Swift.max(W, 1))) { lo, hi in
            for r in lo..<hi {
                let gt = mod.p + (r / L) * chunks * W + chunk * W
                for i in 0..<W { y.p[r * W + i] = x.p[r * W + i] + gt[i] * h.p[r * W + i] }
            }
        }
    }

    /// dx += dy (when dx is not dy itself);  dh = gate dy;  dgate += sum dy h
    public func gatedResidualBackward(_ dy: FT, _ mod: FT, chunk: Int, chunks: Int, _ h: FT, dh: FT, dmod: FT) {
        let W = dy.last, R = dy.rows, N = mod.shape[0], L = R / N
        parallelRanges(N, minPerThread: Swift.max(1, 16384 / Swift.max(L * W, 1))) { n0, n1 in   // by sample (dmod rows)
            for r in (n0 * L)..<(n1 * L) {
                let base = (r / L) * chunks * W + chunk * W
                for i in 0..<W {
                    let g = dy.p[r * W + i]
                    dh.p[r * W + i] = mod.p[base + i] * g
                    dmod.p[base + i] += g * h.p[r * W + i]
                }
            }
        }
    }

    /// GELU, tanh approximation: 0.5 v (1 + tanh(u)), u = c (v + a v^3), computed as the equal
    /// v sigmoid(2u) = v / (1 + exp(-2u)) with a vectorizable exp (`vexp`; CFastKernels), split
    /// over the fast path's threads. (For large negative v this form avoids the cancellation in
    /// 1 + tanh.)
    public func geluTanh(_ x: FT, _ y: FT) {
        let xp = x.p, yp = y.p
        parallelRanges(x.count) { lo, hi in sddit_fast_gelu_tanh(xp, yp, lo, hi) }
        if let e = KernelPerturbation.gelu { for i in 0..<y.count { yp[i] *= 1 + e } }
        roundHalf(y.p, y.count)
    }
    /// d/dv = s + 2 v s (1 - s) c (1 + 3 a v^2), s = sigmoid(2u) (= 0.5 (1 + tanh u)).
    public func geluTanhBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        let xp = x.p, dyp = dy.p, dxp = dx.p
        parallelRanges(x.count) { lo, hi in sddit_fast_gelu_tanh_backward(dyp, xp, dxp, lo, hi) }
        roundHalf(dx.p, dx.count)
    }
    /// GELU, exact: 0.5 v (1 + erf(v / sqrt 2)) (vectorized erf, `verf`; CFastKernels).
    public func geluErf(_ x: FT, _ y: FT) {
        let xp = x.p, yp = y.p
        parallelRanges(x.count) { lo, hi in sddit_fast_gelu_erf(xp, yp, lo, hi) }
        roundHalf(y.p, y.count)
    }
    /// d/dv = Phi(v) + v phi(v) = 0.5 (1 + erf(v / sqrt 2)) + v exp(-v^2 / 2) / sqrt(2 pi).
    public func geluErfBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        let xp = x.p, dyp = dy.p, dxp = dx.p
        parallelRanges(x.count) { lo, hi in sddit_fast_gelu_erf_backward(dyp, xp, dxp, lo, hi) }
        roundHalf(dx.p, dx.count)
    }
    public func silu(_ x: FT, _ y: FT) { for i in 0..<x.count { let v = x.p[i]; y.p[i] = v / (1 + expf(-v)) } }
    public func siluBackward(_ dy: FT, _ x: FT, _ dx: FT, accumulate: Bool) {
        for i in 0..<x.count {
            let v = x.p[i], s = 1 / (1 + expf(-v)), d = dy.p[i] * s * (1 + v * (1 - s))
            if accumulate { dx.p[i] += d } else { dx.p[i] = d }
        }
    }
}
