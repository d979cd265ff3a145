import CFastKernels
import COpenBLAS
import Glibc

// Multi-head attention core with sgemm per (sample, head): S = q k^T / sqrt(hd) (stored in
// P's buffer, checked, then softmax in place in float32), out = P v. qkv [N, L, 3W] in
// PyTorch's (3, heads, hd) split; out [N, L, W]; P [N, H, L, L] kept for backward.
// The (sample, head) pairs are split between the fast path's threads, each running its sgemm
// calls serially (small matrices: one core per product beats two on each); every pair's
// arithmetic is the same whichever worker does it.
extension Kernels {
    /// Per-worker scratch names for half-mode gemm operand copies and the backward's dS,
    /// created before the parallel region (the workspace is not thread-safe to grow); their
    /// count is the number of workers of that region.
    func attentionScratch(L: Int, hd: Int, workers: Int) -> [String] {
        let n = Swift.max(L * L, L * hd, hd * hd)
        return (0..<Swift.max(workers, 1)).map { w in
            let name = "attn.w\(w)"
            if prec.isHalf || prec == .tf32 { for s in [".a", ".b", ".c"] { _ = ws.get(name + s, [n]) } }
            _ = ws.get(name + ".dS", [L, L])
            return name
        }
    }

    /// `unscaled`: q k^T without the 1/sqrt(hd) (a planted bug, `FastVariant.unscaledAttentionBlock`).
    public func attentionLogits(_ qkv: FT, heads H: Int, _ P: FT, unscaled: Bool = false) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        let scale = unscaled ? 1 : 1 / Float(hd).squareRoot()
        let names = attentionScratch(L: L, hd: hd, workers: FastThreads.workers)
        parallelTasks(N * H, workers: names.count) { w, lo, hi in
            for t in lo..<hi {
                let n = t / H, h = t % H
                let q = qkv.p + n * L * 3 * W + h * hd, k = q + W
                gemm(false, true, L, L, hd, scale, q, 3 * W, k, 3 * W, P.p + (n * H + h) * L * L, L, accumulate: false, scratch: names[w], serial: true)
            }
        }
    }

    /// Row softmax in float32, in place (the probabilities are rounded again as PV operands).
    public func softmaxRows(_ P: FT) {
        let L = P.last, p = P.p
        // p = exp(p - max) / sum per row (`vmax`, `vexp`, `vsum`; CFastKernels)
        parallelRanges(P.rows, minPerThread: 64) { lo, hi in sddit_fast_softmax_rows(p, L, lo, hi) }
    }

    public func attentionOutput(_ qkv: FT, heads H: Int, _ P: FT, _ out: FT) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        let names = attentionScratch(L: L, hd: hd, workers: FastThreads.workers)
        parallelTasks(N * H, workers: names.count) { w, lo, hi in
            for t in lo..<hi {
                let n = t / H, h = t % H
                let v = qkv.p + n * L * 3 * W + 2 * W + h * hd
                gemm(false, false, L, hd, L, 1, P.p + (n * H + h) * L * L, L, v, 3 * W, out.p + n * L * W + h * hd, W, accumulate: false, scratch: names[w], serial: true)
            }
        }
    }

    /// dv = P^T dO; dP = dO v^T; dS = P (dP - rowsum(dP P)); dq = dS k / sqrt(hd); dk = dS^T q / sqrt(hd).
    /// Writes dqkv (overwrites: each (sample, head) writes its own q, k and v columns once,
    /// so no zeroing pass is needed).
    public func attentionBackward(_ dout: FT, _ qkv: FT, heads H: Int, _ P: FT, dqkv: FT, unscaled: Bool = false) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        let scale = unscaled ? 1 : 1 / Float(hd).squareRoot()
        let names = attentionScratch(L: L, hd: hd, workers: FastThreads.workers)
        let dSs = names.map { ws.get($0 + ".dS", [L, L]) }
        parallelTasks(N * H, workers: names.count) { w, lo, hi in
            let dS = dSs[w]
            for t in lo..<hi {
                let n = t / H, h = t % H
                let base = n * L * 3 * W + h * hd
                let q = qkv.p + base, k = q + W, v = q + 2 * W
                let dq = dqkv.p + base, dk = dq + W, dv = dq + 2 * W
                let dO = dout.p + n * L * W + h * hd, p = P.p + (n * H + h) * L * L
                gemm(true, false, L, hd, L, 1, p, L, dO, W, dv, 3 * W, accumulate: false, scratch: names[w], serial: true)
                gemm(false, true, L, L, hd, 1, dO, W, v, 3 * W, dS.p, L, accumulate: false, scratch: names[w], serial: true)
                sddit_fast_softmax_backward_rows(dS.p, p, L, 0, L)   // dS = P (dP - rowsum(dP P))
                gemm(false, false, L, hd, L, scale, dS.p, L, k, 3 * W, dq, 3 * W, accumulate: false, scratch: names[w], serial: true)
                gemm(true, false, L, hd, L, scale, dS.p, L, q, 3 * W, dk, 3 * W, accumulate: false, scratch: names[w], serial: true)
            }
        }
    }
}
