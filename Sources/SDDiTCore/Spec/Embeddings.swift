import RealModule

// The fixed embeddings (SPEC §2.2-2.3), one home for both backends.

/// MAE's 2-D sin-cos table (SPEC §2.2): first W/2 channels encode the column, last W/2 the
/// row; each half is [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k/(W/4)), k < W/4.
public enum SinCosPosEmbed {
    public static func table<T: RefScalar>(width W: Int, grid: Int, clsRow: Bool) -> Tensor<T> {
        let q = W / 4, T0 = grid * grid, rows = T0 + (clsRow ? 1 : 0)
        var out = [T](repeating: 0, count: rows * W)
        for t in 0..<T0 {
            let r = (clsRow ? 1 : 0) + t
            for (half, pos) in [(0, t % grid), (1, t / grid)] {
                for k in 0..<q {
                    let w = T.pow(10000, -T(k) / T(q))
                    let a = T(pos) * w
                    out[r * W + half * 2 * q + k] = T.sin(a)
                    out[r * W + half * 2 * q + q + k] = T.cos(a)
                }
            }
        }
        return Tensor(shape: [1, rows, W], data: out)
    }
}

/// DiT's timestep frequency embedding of c_noise (SPEC §2.3): dim 256, half 128,
/// f_k = exp(-ln(10000) k / 128), emb = [cos(t f), sin(t f)]. No trainable input.
public enum TimestepFrequency {
    public static let dim = 256
    public static func forward<T: RefScalar>(_ t: [T]) -> Tensor<T> {
        let half = dim / 2
        var out = [T](repeating: 0, count: t.count * dim)
        for n in 0..<t.count {
            for k in 0..<half {
                let f = T.exp(-T.log(10000) * T(k) / T(half))
                out[n * dim + k] = T.cos(t[n] * f)
                out[n * dim + half + k] = T.sin(t[n] * f)
            }
        }
        return Tensor(shape: [t.count, dim], data: out)
    }
}
