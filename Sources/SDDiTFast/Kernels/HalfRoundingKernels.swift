import SDDiTCore

// Half-type rounding of buffers (fp16, bf16, TF32) without library calls, so the loops
// vectorize: the scalar rules are SDDiTCore's HalfRounding.swift, these are bit-identical
// branch-free versions (checked over all 2^32 inputs in SDDiTFastTests).

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
