import COpenBLAS
import Glibc

// Multi-head attention core with sgemm per (sample, head): S = q k^T / sqrt(hd) (stored in
// P's buffer, checked, then softmax in place in float32), out = P v. qkv [N, L, 3W] in
// PyTorch's (3, heads, hd) split; out [N, L, W]; P [N, H, L, L] kept for backward.
extension Kernels {
    func attentionLogits(_ qkv: FT, heads H: Int, _ P: FT) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        let scale = 1 / Float(hd).squareRoot()
        for n in 0..<N { for h in 0..<H {
            let q = qkv.p + n * L * 3 * W + h * hd, k = q + W
            gemm(false, true, L, L, hd, scale, q, 3 * W, k, 3 * W, P.p + (n * H + h) * L * L, L, accumulate: false)
        } }
    }

    /// Row softmax in float32, in place (the probabilities are rounded again as PV operands).
    func softmaxRows(_ P: FT) {
        let L = P.last
        for r in 0..<P.rows {
            let row = P.p + r * L
            var m = -Float.infinity
            for j in 0..<L { m = max(m, row[j]) }
            var z: Float = 0
            for j in 0..<L { let e = expf(row[j] - m); row[j] = e; z += e }
            let inv = 1 / z
            for j in 0..<L { row[j] *= inv }
        }
    }

    func attentionOutput(_ qkv: FT, heads H: Int, _ P: FT, _ out: FT) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        for n in 0..<N { for h in 0..<H {
            let v = qkv.p + n * L * 3 * W + 2 * W + h * hd
            gemm(false, false, L, hd, L, 1, P.p + (n * H + h) * L * L, L, v, 3 * W, out.p + n * L * W + h * hd, W, accumulate: false)
        } }
    }

    /// dv = P^T dO; dP = dO v^T; dS = P (dP - rowsum(dP P)); dq = dS k / sqrt(hd); dk = dS^T q / sqrt(hd).
    /// Writes dqkv (overwrites).
    func attentionBackward(_ dout: FT, _ qkv: FT, heads H: Int, _ P: FT, dqkv: FT) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.last / 3, hd = W / H
        let scale = 1 / Float(hd).squareRoot()
        dqkv.zero()
        let dS = ws.get("attn.dS", [L, L])
        for n in 0..<N { for h in 0..<H {
            let base = n * L * 3 * W + h * hd
            let q = qkv.p + base, k = q + W, v = q + 2 * W
            let dq = dqkv.p + base, dk = dq + W, dv = dq + 2 * W
            let dO = dout.p + n * L * W + h * hd, p = P.p + (n * H + h) * L * L
            gemm(true, false, L, hd, L, 1, p, L, dO, W, dv, 3 * W, accumulate: true)
            gemm(false, true, L, L, hd, 1, dO, W, v, 3 * W, dS.p, L, accumulate: false)
            for i in 0..<L {
                var dot: Float = 0
                for j in 0..<L { dot += dS.p[i * L + j] * p[i * L + j] }
                for j in 0..<L { dS.p[i * L + j] = p[i * L + j] * (dS.p[i * L + j] - dot) }
            }
            gemm(false, false, L, hd, L, scale, dS.p, L, k, 3 * W, dq, 3 * W, accumulate: true)
            gemm(true, false, L, hd, L, scale, dS.p, L, q, 3 * W, dk, 3 * W, accumulate: true)
        } }
    }
}
