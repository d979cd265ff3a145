import SDDiTCore
import COpenBLAS
import Dispatch
import Glibc
import Synchronization

// The fast path's kernels: OpenBLAS sgemm for every matrix product, fused element-wise loops.
// Half modes round matmul operands and outputs to fp16/bf16 (float32 accumulation).
// Public so that SDDiTFastTests can hold each kernel against its reference layer.
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
    /// v sigmoid(2u) = v / (1 + exp(-2u)) with a vectorizable exp (`vexp`), split over the
    /// BLAS threads. (For large negative v this form avoids the cancellation in 1 + tanh.)
    public func geluTanh(_ x: FT, _ y: FT) {
        let c2: Float = 2 * 0.7978845608028654, a: Float = 0.044715
        let xp = x.p, yp = y.p
        parallelRanges(x.count) { lo, hi in
            for i in lo..<hi { let v = xp[i]; yp[i] = v / (1 + vexp(-c2 * (v + a * v * v * v))) }
        }
        if let e = KernelPerturbation.gelu { for i in 0..<y.count { yp[i] *= 1 + e } }
        roundHalf(y.p, y.count)
    }
    /// d/dv = s + 2 v s (1 - s) c (1 + 3 a v^2), s = sigmoid(2u) (= 0.5 (1 + tanh u)).
    public func geluTanhBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        let c: Float = 0.7978845608028654, a: Float = 0.044715
        let xp = x.p, dyp = dy.p, dxp = dx.p
        parallelRanges(x.count) { lo, hi in
            for i in lo..<hi {
                let v = xp[i], s = 1 / (1 + vexp(-2 * c * (v + a * v * v * v)))
                dxp[i] = dyp[i] * (s + 2 * v * s * (1 - s) * c * (1 + 3 * a * v * v))
            }
        }
        roundHalf(dx.p, dx.count)
    }
    /// GELU, exact (erf; vectorized erf, `verf`; split over the BLAS threads).
    public func geluErf(_ x: FT, _ y: FT) {
        let xp = x.p, yp = y.p
        parallelRanges(x.count) { lo, hi in
            for i in lo..<hi { let v = xp[i]; yp[i] = 0.5 * v * (1 + verf(v * 0.70710678118654752)) }
        }
        roundHalf(y.p, y.count)
    }
    public func geluErfBackward(_ dy: FT, _ x: FT, _ dx: FT) {
        let xp = x.p, dyp = dy.p, dxp = dx.p
        parallelRanges(x.count) { lo, hi in
            for i in lo..<hi {
                let v = xp[i]
                dxp[i] = dyp[i] * (0.5 * (1 + verf(v * 0.70710678118654752)) + v * 0.3989422804014327 * vexp(-0.5 * v * v))
            }
        }
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


// MARK: half-type rounding without libcalls

/// Rounds float32 to the nearest fp16 value (ties to even; fp16 subnormals; overflow to inf),
/// kept in a Float: bit for bit `Float(Float16(x))` (checked over all 2^32 inputs), but with
/// integer and float32 operations only, so loops over it vectorize (the default target has no
/// F16C: Float16 conversions are library calls).
@inline(__always) func vroundFP16(_ x: Float) -> Float {
    let bits = x.bitPattern
    let sign = bits & 0x8000_0000
    let ab = bits & 0x7FFF_FFFF
    let a = Float(bitPattern: ab)
    // normal fp16 range: round the float32 mantissa to 10 bits, ties to even
    let rn = Float(bitPattern: (ab &+ 0x0FFF &+ ((ab >> 13) & 1)) & 0xFFFF_E000)
    // fp16 subnormals (|x| < 2^-14) are multiples of 2^-24: the ulp of float32 in [0.5, 1)
    let sub = (a + 0.75) - 0.75
    var r = a < 6.103515625e-05 ? sub : rn
    r = r >= 65536 ? Float.infinity : r
    let out = Float(bitPattern: r.bitPattern | sign)
    return x.isNaN ? x : out
}

/// `roundBF16` without the early return (same bits), so that loops over it vectorize.
@inline(__always) func vroundBF16(_ x: Float) -> Float {
    let b = x.bitPattern
    let r = Float(bitPattern: (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000)
    return x.isNaN ? x : r
}

extension Kernels {
    /// Rounds n floats in place to the half type (same bits as `prec.round`), split over threads.
    func roundHalf(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        guard prec.isHalf else { return }
        let k = self
        parallelRanges(n) { lo, hi in k.roundHalfSerial(p + lo, hi - lo) }
    }
    func roundHalfSerial(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        if prec.isFP16 { for i in 0..<n { p[i] = vroundFP16(p[i]) } }
        else if prec.isHalf { for i in 0..<n { p[i] = vroundBF16(p[i]) } }
    }
    /// dst[r cols + c] = round(src[r ld + c]) to the operand type (fp16, bf16 or TF32).
    func copyRounded(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, serial: Bool = false) {
        let fp16 = prec.isFP16, tf32 = prec == .tf32
        parallelRanges(rows, minPerThread: serial ? rows + 1 : Swift.max(1, 16384 / Swift.max(cols, 1))) { lo, hi in
            for r in lo..<hi {
                let d = dst + r * cols, s = src + r * ld
                if fp16 { for c in 0..<cols { d[c] = vroundFP16(s[c]) } }
                else if tf32 { for c in 0..<cols { d[c] = roundTF32(s[c]) } }
                else { for c in 0..<cols { d[c] = vroundBF16(s[c]) } }
            }
        }
    }
    /// C[r ldc + c] (+)= half(t[r cols + c]).
    func storeRounded(_ C: UnsafeMutablePointer<Float>, _ ldc: Int, _ t: UnsafePointer<Float>, rows: Int, cols: Int, accumulate: Bool,
                      serial: Bool = false) {
        let fp16 = prec.isFP16
        parallelRanges(rows, minPerThread: serial ? rows + 1 : Swift.max(1, 16384 / Swift.max(cols, 1))) { lo, hi in
            for r in lo..<hi {
                let d = C + r * ldc, s = t + r * cols
                switch (fp16, accumulate) {
                case (true, true): for c in 0..<cols { d[c] += vroundFP16(s[c]) }
                case (true, false): for c in 0..<cols { d[c] = vroundFP16(s[c]) }
                case (false, true): for c in 0..<cols { d[c] += vroundBF16(s[c]) }
                case (false, false): for c in 0..<cols { d[c] = vroundBF16(s[c]) }
                }
            }
        }
    }
}

// MARK: vectorizable elementary functions and a two-way parallel loop

/// exp(x) in float32 without a libm call, so that loops over it vectorize: Cephes' expf
/// (Cody-Waite reduction by ln 2, degree-6 polynomial, about 1 ulp); 2^n is built from the
/// bits of x log2(e) + 1.5 * 2^23 (no float-to-int conversion). exp(x) = 0 below -87.3
/// (where float32's result would be subnormal); x is capped at 88 (exp 1.65e38). NaN stays NaN.
@inline(__always) func vexp(_ x0: Float) -> Float {
    let x = Swift.min(Swift.max(x0, -87.33), 88)
    let t = x * 1.44269504088896341 + 12582912.0
    let n = t - 12582912.0
    let r = (x - n * 0.693359375) + n * 2.12194440e-4
    let z = r * r
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let e = p * z + r + 1
    let scale = Float(bitPattern: (t.bitPattern &<< 23) &+ 0x3F80_0000)
    let y = e * scale
    return x0 < -87.33 ? 0 : (x0.isNaN ? x0 : y)
}

/// erf(x) in float32, vectorizable (N. Juffa's erff: odd polynomial below 0.921875,
/// 1 - exp(polynomial) above, sign restored; about 1.1 ulp).
@inline(__always) func verf(_ a: Float) -> Float {
    let t = abs(a), s = a * a
    var r: Float = -1.72853470e-5 * t + 3.83197126e-4
    let u: Float = -3.88396438e-3 * t + 2.42546219e-2
    r = r * s + u
    r = r * t - 1.06777877e-1
    r = r * t - 6.34846687e-1
    r = r * t - 1.28717512e-1
    r = r * t - t
    let big = 1 - vexp(r)
    var q: Float = -5.96761703e-4
    q = q * s + 4.99119423e-3
    q = q * s - 2.67681349e-2
    q = q * s + 1.12819925e-1
    q = q * s - 3.76125336e-1
    q = q * s + 1.28379166e-1
    let small = q * a + a
    return t >= 0.921875 ? (a < 0 ? -big : big) : small
}

// Reductions with several partial sums (4 SSE vectors; the default target has SSE only, where
// Swift's SIMD16 and pointwiseMax lower poorly). The order of the additions differs from a
// plain loop: float32 rounding differs, the meaning does not.

/// Sum of n floats.
@inline(__always) func vsum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = SIMD4<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
    var j = 0
    let raw = UnsafeRawPointer(p)
    while j + 16 <= n {
        a0 += raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self)
        a1 += raw.loadUnaligned(fromByteOffset: j * 4 + 16, as: SIMD4<Float>.self)
        a2 += raw.loadUnaligned(fromByteOffset: j * 4 + 32, as: SIMD4<Float>.self)
        a3 += raw.loadUnaligned(fromByteOffset: j * 4 + 48, as: SIMD4<Float>.self)
        j += 16
    }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while j < n { s += p[j]; j += 1 }
    return s
}

/// Sum of (p[i] - m)^2 over n floats.
@inline(__always) func vsumSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, _ m: Float) -> Float {
    var a0 = SIMD4<Float>(repeating: 0), a1 = a0
    let mv = SIMD4<Float>(repeating: m)
    var j = 0
    let raw = UnsafeRawPointer(p)
    while j + 8 <= n {
        let d0 = raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self) - mv
        let d1 = raw.loadUnaligned(fromByteOffset: j * 4 + 16, as: SIMD4<Float>.self) - mv
        a0 += d0 * d0; a1 += d1 * d1
        j += 8
    }
    var s = (a0 + a1).sum()
    while j < n { let d = p[j] - m; s += d * d; j += 1 }
    return s
}

/// Dot product of n floats.
@inline(__always) func vdot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = SIMD4<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
    var j = 0
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while j + 16 <= n {
        a0 += ra.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self)
        a1 += ra.loadUnaligned(fromByteOffset: j * 4 + 16, as: SIMD4<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4 + 16, as: SIMD4<Float>.self)
        a2 += ra.loadUnaligned(fromByteOffset: j * 4 + 32, as: SIMD4<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4 + 32, as: SIMD4<Float>.self)
        a3 += ra.loadUnaligned(fromByteOffset: j * 4 + 48, as: SIMD4<Float>.self) * rb.loadUnaligned(fromByteOffset: j * 4 + 48, as: SIMD4<Float>.self)
        j += 16
    }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while j < n { s += a[j] * b[j]; j += 1 }
    return s
}

/// True when all n floats are finite: x * 0 is 0 for finite x and NaN for an infinity or a
/// NaN, and a NaN survives the sums.
@inline(__always) func vallFinite(_ p: UnsafePointer<Float>, _ n: Int) -> Bool {
    var a0 = SIMD4<Float>(repeating: 0), a1 = a0
    let raw = UnsafeRawPointer(p)
    var j = 0
    while j + 8 <= n {
        a0 += raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD4<Float>.self) * 0
        a1 += raw.loadUnaligned(fromByteOffset: j * 4 + 16, as: SIMD4<Float>.self) * 0
        j += 8
    }
    var s = (a0 + a1).sum()
    while j < n { s += p[j] * 0; j += 1 }
    return s == 0
}

/// Largest of n floats (4 running maxima). A NaN may be skipped here; callers use it only
/// as the softmax shift, where a NaN in the row reappears in its exponential.
@inline(__always) func vmax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = -Float.infinity, a1 = a0, a2 = a0, a3 = a0
    var j = 0
    while j + 4 <= n {
        a0 = p[j] > a0 ? p[j] : a0; a1 = p[j + 1] > a1 ? p[j + 1] : a1
        a2 = p[j + 2] > a2 ? p[j + 2] : a2; a3 = p[j + 3] > a3 ? p[j + 3] : a3
        j += 4
    }
    var m = Swift.max(Swift.max(a0, a1), Swift.max(a2, a3))
    while j < n { m = Swift.max(m, p[j]); j += 1 }
    return m
}

/// The fast path's thread count (`BLASInfo.setThreads`, `oracle bench --threads`; by default
/// OPENBLAS_NUM_THREADS, else all cores). It decides only how many workers share the work:
/// no result depends on it (see `sgemmTiled`, `parallelRanges`, `parallelTasks`).
@inline(__always) func blasThreads() -> Int { FastThreads.configured }

/// Runs body(lo, hi) over [0, n) split into contiguous chunks (4 per thread, taken by
/// whichever thread is free, so a core busy with something else delays little); serially when
/// n is small or there is one thread. For element- and row-wise work only: a body must not
/// carry a sum across its range, so that no result depends on the split.
@inline(__always) func parallelRanges(_ n: Int, minPerThread: Int = 16384, _ body: (Int, Int) -> Void) {
    let t = Swift.min(blasThreads(), Swift.max(1, n / minPerThread))
    if t <= 1 { body(0, n); return }
    let chunks = Swift.min(4 * t, Swift.max(1, n / Swift.max(1, minPerThread / 4)))
    withoutActuallyEscaping(body) { b in
        let box = UncheckedSendable(b)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in box.value(n * c / chunks, n * (c + 1) / chunks) }
    }
}

/// Runs body(worker, lo, hi) over [0, n) independent tasks, one contiguous chunk per worker
/// (worker < `workers`, each with its own scratch). A task's arithmetic must not depend on
/// which worker runs it; OpenBLAS calls inside a task are single-threaded (`serial: true`).
func parallelTasks(_ n: Int, workers: Int, _ body: (Int, Int, Int) -> Void) {
    let t = Swift.min(workers, n)
    if t <= 1 { body(0, 0, n); return }
    withoutActuallyEscaping(body) { b in
        let box = UncheckedSendable(b)
        DispatchQueue.concurrentPerform(iterations: t) { w in box.value(w, n * w / t, n * (w + 1) / t) }
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
    if tiles == 1 || serial || blasThreads() == 1 { for i in 0..<tiles { tile(i) }; return }
    withoutActuallyEscaping(tile) { t in
        let box = UncheckedSendable(t)
        DispatchQueue.concurrentPerform(iterations: tiles) { i in box.value(i) }
    }
}

/// The fast path's thread count, and OpenBLAS kept on one thread from the first fast-path
/// call on (its thread count is process-wide; it is set once, before any work, and never
/// changed again, so concurrent models cannot change each other's bits).
enum FastThreads {
    /// OpenBLAS's own default (OPENBLAS_NUM_THREADS, else all cores), read before it is set to 1.
    private static let initial: Int = {
        let n = Int(openblas_get_num_threads())
        openblas_set_num_threads(1)
        return Swift.max(1, n)
    }()
    private static let count = Atomic<Int>(initial)
    static var configured: Int { count.load(ordering: .relaxed) }
    static func configure(_ n: Int) { count.store(Swift.max(1, n), ordering: .relaxed) }
    @inline(__always) static func ensureSingleThreadedBLAS() { _ = initial }
}

/// Hands a closure over raw buffers to Dispatch's workers: each worker touches a disjoint
/// part of the buffers, and the call returns only when every worker is done.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

/// A verification hook for `oracle regress` (and for nothing else): it lets a test show that
/// `oracle regress check` catches a deliberately wrong kernel without rebuilding.
/// `SDDIT_ORACLE_PERTURB=<kernel>:<relative size>`, read once when the fast path first runs,
/// multiplies the forward output of that fast-path kernel by (1 + size):
///   gelu       GELU tanh of every DiT / decoder block's MLP (`Kernels.geluTanh`)
///   layernorm  fused LayerNorm + modulate (`Kernels.lnModulate`)
/// Unset (the normal case) it costs one branch per kernel call. Backward kernels and the
/// reference are untouched, so a perturbed run also breaks the fast path's gradients' agreement.
public enum KernelPerturbation {
    public static let setting: (kernel: String, size: Float)? = {
        guard let raw = getenv("SDDIT_ORACLE_PERTURB") else { return nil }
        let parts = String(cString: raw).split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, let size = Float(parts[1]), size.isFinite,
              ["gelu", "layernorm"].contains(parts[0]) else { return nil }
        return (parts[0], size)
    }()
    static let gelu: Float? = setting.flatMap { $0.kernel == "gelu" ? $0.size : nil }
    static let layernorm: Float? = setting.flatMap { $0.kernel == "layernorm" ? $0.size : nil }
    /// A malformed value is not ignored silently: callers (oracle regress) report it.
    public static var rawValue: String? { getenv("SDDIT_ORACLE_PERTURB").map { String(cString: $0) } }
    /// One line on stderr, once per process, when a fast model is built with the hook set: a
    /// perturbed `oracle diff`, `bench` or `train` must not pass for a normal one.
    static let warnOnce: Void = {
        guard let raw = rawValue else { return }
        let what = setting.map { "fast-path kernel \($0.kernel) multiplied by 1 + \($0.size)" } ?? "malformed, no kernel perturbed"
        let line = "warning: SDDIT_ORACLE_PERTURB=\(raw) is set (\(what)); a verification hook, not a normal run\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }()
}

/// The fast path's element-wise float32 functions, for tests and tools (the loops call the
/// inlined versions): swept against independent definitions in Tests/SDDiTFastTests.
public enum FastMath {
    public static func exp(_ x: Float) -> Float { vexp(x) }
    public static func erf(_ x: Float) -> Float { verf(x) }
    public static func roundFP16(_ x: Float) -> Float { vroundFP16(x) }
    public static func roundBF16(_ x: Float) -> Float { vroundBF16(x) }
}
