import RealModule

// Multi-head self-attention core (SPEC §2.6), between the qkv and proj linears.
// qkv [N, L, 3W] split as PyTorch's reshape(N, L, 3, heads, W/heads) -> out [N, L, W]:
// P = softmax(q k^T / sqrt(W/heads)) per (n, head), out = P v, heads concatenated.
// forward / backward: Double through `Product` for q k^T, P v and their gradients (the plain
// loops' bits, AttentionKernels.swift); other types through the plain loops, the definition.
public enum Attention {
    public struct Saved<T: RefScalar>: Sendable { public var probs: [T] }   // P [N, heads, L, L]

    public static func forward<T: RefScalar>(_ qkv: Tensor<T>, heads: Int) -> (y: Tensor<T>, saved: Saved<T>) {
        if T.self == Double.self {   // (same layout: the casts copy nothing)
            let (y, P) = forwardKernel(asDouble(qkv), heads: heads)
            return (unsafeBitCast(y, to: Tensor<T>.self), Saved(probs: unsafeBitCast(P, to: [T].self)))
        }
        return forwardPlain(qkv, heads: heads)
    }

    public static func backward<T: RefScalar>(dy: Tensor<T>, qkv: Tensor<T>, heads: Int, saved: Saved<T>,
                                              dqkv: inout Tensor<T>) {
        guard T.self == Double.self else { return backwardPlain(dy: dy, qkv: qkv, heads: heads, saved: saved, dqkv: &dqkv) }
        withDoubleStorage(&dqkv) { d in
            backwardKernel(dy: asDouble(dy), qkv: asDouble(qkv), heads: heads, probs: unsafeBitCast(saved.probs, to: [Double].self), dqkv: &d)
        }
    }

    // MARK: the plain loops: the definition

    public static func forwardPlain<T: RefScalar>(_ qkv: Tensor<T>, heads: Int) -> (y: Tensor<T>, saved: Saved<T>) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.lastDim / 3, hd = W / heads
        let scale = 1 / T(hd).squareRoot()
        var out = [T](repeating: 0, count: N * L * W)
        var P = [T](repeating: 0, count: N * heads * L * L)
        @inline(__always) func at(_ n: Int, _ l: Int, _ part: Int, _ h: Int, _ d: Int) -> Int {
            ((n * L + l) * 3 + part) * W + h * hd + d
        }
        for n in 0..<N { for h in 0..<heads {
            let base = (n * heads + h) * L * L
            for i in 0..<L {
                var mx = -T.infinity
                for j in 0..<L {
                    var s: T = 0
                    for d in 0..<hd { s += qkv.data[at(n, i, 0, h, d)] * qkv.data[at(n, j, 1, h, d)] }
                    s *= scale
                    P[base + i * L + j] = s
                    mx = max(mx, s)
                }
                var z: T = 0
                for j in 0..<L { let e = T.exp(P[base + i * L + j] - mx); P[base + i * L + j] = e; z += e }
                for j in 0..<L { P[base + i * L + j] /= z }
                for d in 0..<hd {
                    var s: T = 0
                    for j in 0..<L { s += P[base + i * L + j] * qkv.data[at(n, j, 2, h, d)] }
                    out[(n * L + i) * W + h * hd + d] = s
                }
            }
        } }
        return (Tensor(shape: [N, L, W], data: out), Saved(probs: P))
    }

    /// dv = P^T dy; dP = dy v^T; dS = P (dP - rowsum(dP P)); dq = dS k / sqrt(hd); dk = dS^T q / sqrt(hd)
    public static func backwardPlain<T: RefScalar>(dy: Tensor<T>, qkv: Tensor<T>, heads: Int, saved: Saved<T>,
                                              dqkv: inout Tensor<T>) {
        let N = qkv.shape[0], L = qkv.shape[1], W = qkv.lastDim / 3, hd = W / heads
        let scale = 1 / T(hd).squareRoot()
        @inline(__always) func at(_ n: Int, _ l: Int, _ part: Int, _ h: Int, _ d: Int) -> Int {
            ((n * L + l) * 3 + part) * W + h * hd + d
        }
        var dS = [T](repeating: 0, count: L * L)
        for n in 0..<N { for h in 0..<heads {
            let base = (n * heads + h) * L * L
            for i in 0..<L {
                var dot: T = 0
                for j in 0..<L {
                    var g: T = 0
                    for d in 0..<hd { g += dy.data[(n * L + i) * W + h * hd + d] * qkv.data[at(n, j, 2, h, d)] }
                    dS[i * L + j] = g
                    dot += g * saved.probs[base + i * L + j]
                }
                for j in 0..<L {
                    let p = saved.probs[base + i * L + j]
                    dS[i * L + j] = p * (dS[i * L + j] - dot) * scale
                }
            }
            for j in 0..<L { for d in 0..<hd {
                var dv: T = 0, dk: T = 0
                for i in 0..<L {
                    dv += saved.probs[base + i * L + j] * dy.data[(n * L + i) * W + h * hd + d]
                    dk += dS[i * L + j] * qkv.data[at(n, i, 0, h, d)]
                }
                dqkv.data[at(n, j, 2, h, d)] += dv
                dqkv.data[at(n, j, 1, h, d)] += dk
            } }
            for i in 0..<L { for d in 0..<hd {
                var dq: T = 0
                for j in 0..<L { dq += dS[i * L + j] * qkv.data[at(n, j, 1, h, d)] }
                dqkv.data[at(n, i, 0, h, d)] += dq
            } }
        } }
    }
}
