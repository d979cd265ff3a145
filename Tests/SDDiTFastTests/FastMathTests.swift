import Foundation
import SDDiTCore
import SDDiTFast
import Testing

// The fast path's element-wise float32 functions against independent definitions: the
// half-type roundings bit for bit (fp16 against Swift's Float16 conversion; bf16 and TF32
// against round-to-nearest-even computed in Double), exp and erf within 2 ulp of the Double
// functions (their sources claim about 1 ulp and 1.1 ulp). `swift test` samples the 2^32
// float32 bit patterns (every 65,537th, plus every pattern near the half types' boundaries);
// SDDIT_FULL_SWEEP=1 (tools/sweep-fast-math.sh) runs all of them.

/// Bit patterns to check: a strided sample of all 2^32, or all of them.
private func patterns(_ body: (UInt32) -> Void) {
    if ProcessInfo.processInfo.environment["SDDIT_FULL_SWEEP"] == "1" {
        var b: UInt32 = 0
        repeat { body(b); b &+= 1 } while b != 0
        return
    }
    var b: UInt64 = 0
    while b <= UInt64(UInt32.max) { body(UInt32(b)); b += 65_537 }
    // every pattern within 2^16 of the fp16 / bf16 landmarks: the smallest normals and
    // subnormals, the largest finite values, 1, and the overflow thresholds
    let landmarks: [Float] = [6.103515625e-05, 5.9604645e-08, 65504, 65520, 1, Float.leastNormalMagnitude,
                              Float.greatestFiniteMagnitude, 3.3895314e38, 0]
    for l in landmarks {
        let c = Int64(l.bitPattern)
        for d in Int64(-65_536)...65_536 where c + d >= 0 && c + d <= Int64(UInt32.max >> 1) {
            body(UInt32(c + d)); body(UInt32(c + d) | 0x8000_0000)
        }
    }
}

/// Round-to-nearest-even of x to `bits` significand bits (explicit, after the leading one)
/// with float32's exponent range, in Double: the definition of bf16 (7) and TF32 (10).
private func roundToBits(_ x: Float, _ bits: Int) -> Float {
    if !x.isFinite || x == 0 { return x }
    let e = max(Int(x.exponent), -126)
    let ulp = Double(sign: .plus, exponent: e - bits, significand: 1)
    let r = (Double(x) / ulp).rounded(.toNearestOrEven) * ulp
    return abs(r) >= 0x1p128 ? (x < 0 ? -.infinity : .infinity) : Float(r)
}

/// |y - exact| in units of the float32 ulp at the exact value.
private func ulps(_ y: Float, _ exact: Double) -> Double {
    let f = Float(exact)
    let u = f == 0 ? Double(Float.leastNonzeroMagnitude) : Double(f.ulp)
    return abs(Double(y) - exact) / u
}

@Suite("Fast path: element-wise functions")
struct FastMathTests {
    @Test func fp16RoundingIsFloat16Conversion() {
        var bad: (UInt32, Float, Float)?, n = 0
        patterns { b in
            let x = Float(bitPattern: b)
            let got = FastMath.roundFP16(x), want = Float(Float16(x))
            n += 1
            if bad == nil, got.bitPattern != want.bitPattern && !(got.isNaN && want.isNaN) { bad = (b, got, want) }
        }
        #expect(bad == nil, "x bits \(String(bad?.0 ?? 0, radix: 16)): \(bad?.1 ?? 0) vs Float16 \(bad?.2 ?? 0) (\(n) patterns)")
    }

    @Test func bf16AndTF32RoundingAreNearestEven() {
        var bad: String?
        patterns { b in
            let x = Float(bitPattern: b)
            guard bad == nil, !x.isNaN else { return }
            let pairs: [(String, Float, Float)] = [("bf16 (fast loops)", FastMath.roundBF16(x), roundToBits(x, 7)),
                                                   ("bf16", roundBF16(x), roundToBits(x, 7)),
                                                   ("tf32", roundTF32(x), roundToBits(x, 10))]
            for (name, got, want) in pairs where got.bitPattern != want.bitPattern {
                bad = "\(name) of \(x) (bits \(String(b, radix: 16))): \(got) vs \(want)"
            }
        }
        #expect(bad == nil, "bf16 or TF32 rounding is not round-to-nearest-even: \(bad ?? "")")
        #expect(FastMath.roundBF16(.nan).isNaN && roundTF32(.nan).isNaN, "bf16 or TF32 rounding of NaN is not NaN")
    }

    @Test func expWithinTwoUlps() {
        var worst = 0.0, at: Float = 0
        patterns { b in
            let x = Float(bitPattern: b)
            guard x.isFinite, x >= -87.33, x <= 88 else { return }
            let e = ulps(FastMath.exp(x), Foundation.exp(Double(x)))
            if e > worst { worst = e; at = x }
        }
        #expect(worst <= 2, "exp: \(worst) ulp at x = \(at)")
        print(String(format: "vexp: worst %.3f ulp at x = %@", worst, "\(at)"))
        #expect(FastMath.exp(-90) == 0 && FastMath.exp(.nan).isNaN && FastMath.exp(100) == FastMath.exp(88), "vexp's edges: exp(-90) \(FastMath.exp(-90)), exp(NaN) \(FastMath.exp(.nan)), exp(100) \(FastMath.exp(100)) vs exp(88) \(FastMath.exp(88))")
    }

    @Test func erfWithinTwoUlps() {
        var worst = 0.0, at: Float = 0
        patterns { b in
            let x = Float(bitPattern: b)
            guard x.isFinite else { return }
            let e = ulps(FastMath.erf(x), Foundation.erf(Double(x)))
            if e > worst { worst = e; at = x }
        }
        #expect(worst <= 2, "erf: \(worst) ulp at x = \(at)")
        print(String(format: "verf: worst %.3f ulp at x = %@", worst, "\(at)"))
    }
}
