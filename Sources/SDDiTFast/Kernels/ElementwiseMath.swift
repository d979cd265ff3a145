// Vectorizable element-wise functions and reductions in float32 (no libm calls): exp, erf,
// sums, dot products, the finite check, the row maximum.

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

/// inlined versions): swept against independent definitions in Tests/SDDiTFastTests.
public enum FastMath {
    public static func exp(_ x: Float) -> Float { vexp(x) }
    public static func erf(_ x: Float) -> Float { verf(x) }
    public static func roundFP16(_ x: Float) -> Float { vroundFP16(x) }
    public static func roundBF16(_ x: Float) -> Float { vroundBF16(x) }
}


/// The Swift definitions of the loops that CFastKernels runs vectorized (GELU, softmax): the
/// C kernels must give these bits exactly, on every instruction set (Tests/SDDiTFastTests).
public enum FastLoops {
    /// GELU tanh form: v / (1 + exp(-2c (v + a v^3))).
    public static func geluTanh(_ v: Float) -> Float {
        let c2: Float = 2 * 0.7978845608028654, a: Float = 0.044715
        return v / (1 + vexp(-c2 * (v + a * v * v * v)))
    }
    /// Its derivative (dx = dy * this): s + 2 v s (1 - s) c (1 + 3 a v^2), s = 1 / (1 + exp(-2u)).
    public static func geluTanhDerivative(_ v: Float) -> Float {
        let c: Float = 0.7978845608028654, a: Float = 0.044715
        let s = 1 / (1 + vexp(-2 * c * (v + a * v * v * v)))
        return s + 2 * v * s * (1 - s) * c * (1 + 3 * a * v * v)
    }
    /// GELU exact: 0.5 v (1 + erf(v / sqrt 2)).
    public static func geluErf(_ v: Float) -> Float { 0.5 * v * (1 + verf(v * 0.70710678118654752)) }
    /// Its derivative (dx = dy * this).
    public static func geluErfDerivative(_ v: Float) -> Float {
        0.5 * (1 + verf(v * 0.70710678118654752)) + v * 0.3989422804014327 * vexp(-0.5 * v * v)
    }
    /// row = exp(row - max) / sum, in place.
    public static func softmaxRow(_ row: UnsafeMutablePointer<Float>, _ L: Int) {
        let m = vmax(row, L)
        for j in 0..<L { row[j] = vexp(row[j] - m) }
        let inv = 1 / vsum(row, L)
        for j in 0..<L { row[j] *= inv }
    }
    /// ds = p (ds - sum_j ds p), in place (softmax backward of one row).
    public static func softmaxBackwardRow(_ ds: UnsafeMutablePointer<Float>, _ p: UnsafePointer<Float>, _ L: Int) {
        let dot = vdot(ds, p, L)
        for j in 0..<L { ds[j] = p[j] * (ds[j] - dot) }
    }
    /// AdamW on one element (h as for CFastKernels' sddit_fast_adamw:
    /// {1 - lr wd, b1, a1, b2, a2, lr / bc1, bc2, eps}); m, v nil: from zero moments.
    public static func adamW(p: inout Float, g: Float, m: inout Float, v: inout Float, _ h: [Float]) {
        p *= h[0]
        m = h[1] * m + h[2] * g
        v = h[3] * v + h[4] * g * g
        p -= h[5] * m / (v.squareRoot() / h[6] + h[7])
    }
}
