import CFastKernels
import Glibc
import SDDiTCore
import SDDiTFast
import Testing

// CFastKernels (the vectorized GELU and softmax loops) against their Swift definitions
// (`FastLoops`, `FastMath`), bit for bit, on every instruction set this CPU has: the C loops
// promise the same operations in the same order, so any difference is a bug.

private let isas = ["avx512f", "avx2", "sse2"]

/// Values that reach every branch: normals at several scales, the clamps of exp (-87.33, 88),
/// erf's switch at 0.921875, zeros, infinities, NaN, subnormals, the largest floats.
private func inputs(_ n: Int, seed: UInt64) -> [Float] {
    var rng = SeededRandom(seed: seed)
    var v = rng.normals(n, std: 1).enumerated().map { i, x in Float(x * [0.01, 1, 3, 12, 60][i % 5]) }
    v += [0, -0, .infinity, -.infinity, .nan, Float.leastNonzeroMagnitude, -Float.leastNormalMagnitude,
          Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude, -87.33, 88, 0.921875, -0.921875,
          Float(-87.33).nextDown, Float(88).nextUp, -44, 44, 9.9, -9.9]
    return v
}

private func firstMismatch(_ got: [Float], _ want: [Float], _ x: [Float]) -> String? {
    for i in got.indices where got[i].bitPattern != want[i].bitPattern && !(got[i].isNaN && want[i].isNaN) {
        return "index \(i), input \(x[i]): C \(got[i]) (0x\(String(got[i].bitPattern, radix: 16))), Swift \(want[i]) (0x\(String(want[i].bitPattern, radix: 16)))"
    }
    return nil
}

@Suite("Fast path: C element-wise kernels")
struct FastCKernelTests {
    /// Runs body with each instruction set the CPU has selected, restoring the default after.
    private func eachISA(_ body: (String) -> Void) {
        let saved = String(cString: sddit_fast_isa())
        defer { _ = sddit_fast_set_isa(saved) }
        for isa in isas where sddit_fast_set_isa(isa) != 0 { body(isa) }
    }

    @Test func expAndErfAreTheSwiftFunctions() {
        var bad: String?
        var b: UInt64 = 0
        while b <= UInt64(UInt32.max), bad == nil {
            let x = Float(bitPattern: UInt32(b))
            let e = sddit_fast_exp(x), f = sddit_fast_erf(x), e0 = FastMath.exp(x), f0 = FastMath.erf(x)
            if e.bitPattern != e0.bitPattern && !(e.isNaN && e0.isNaN) { bad = "exp(\(x)): C \(e), Swift \(e0)" }
            if f.bitPattern != f0.bitPattern && !(f.isNaN && f0.isNaN) { bad = "erf(\(x)): C \(f), Swift \(f0)" }
            b += 4099
        }
        #expect(bad == nil, "\(bad ?? "")")
    }

    @Test func geluLoopsMatchTheirDefinitions() {
        let x = inputs(20_011, seed: 7), dy = inputs(x.count, seed: 8)
        let n = x.count
        let cases: [(String, (Float) -> Float, (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int, Int) -> Void)] = [
            ("GELU tanh", FastLoops.geluTanh, { sddit_fast_gelu_tanh($0, $1, $2, $3) }),
            ("GELU erf", FastLoops.geluErf, { sddit_fast_gelu_erf($0, $1, $2, $3) }),
        ]
        let backward: [(String, (Float) -> Float, (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int, Int) -> Void)] = [
            ("GELU tanh backward", FastLoops.geluTanhDerivative, { sddit_fast_gelu_tanh_backward($0, $1, $2, $3, $4) }),
            ("GELU erf backward", FastLoops.geluErfDerivative, { sddit_fast_gelu_erf_backward($0, $1, $2, $3, $4) }),
        ]
        eachISA { isa in
            for (name, f, kernel) in cases {
                var y = [Float](repeating: 7, count: n)
                // two ranges, as the threads split them
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                    kernel(xp.baseAddress!, yp.baseAddress!, 0, 4097); kernel(xp.baseAddress!, yp.baseAddress!, 4097, n)
                } }
                let m = firstMismatch(y, x.map(f), x)
                #expect(m == nil, "\(name) (\(isa)) differs from its Swift loop at \(m ?? "")")
            }
            for (name, d, kernel) in backward {
                var dx = [Float](repeating: 7, count: n)
                dy.withUnsafeBufferPointer { g in x.withUnsafeBufferPointer { xp in dx.withUnsafeMutableBufferPointer { dp in
                    kernel(g.baseAddress!, xp.baseAddress!, dp.baseAddress!, 0, 1001); kernel(g.baseAddress!, xp.baseAddress!, dp.baseAddress!, 1001, n)
                } } }
                let m = firstMismatch(dx, zip(dy, x).map { $0 * d($1) }, x)
                #expect(m == nil, "\(name) (\(isa)) differs from its Swift loop at \(m ?? "")")
            }
        }
    }

    @Test(arguments: [1, 5, 16, 17, 37, 64, 205, 257])
    func softmaxRowsMatchTheirDefinitions(_ L: Int) {
        let rows = 9
        var s = inputs(rows * L, seed: UInt64(L)).prefix(rows * L).map { $0 }
        if L > 3 { s[2 * L + 1] = .infinity; s[3 * L] = .nan; s[4 * L + 2] = -.infinity }   // rows that go to NaN
        let g = inputs(rows * L, seed: UInt64(L) + 99).prefix(rows * L).map { $0 / 4 }
        var want = s, wantDS = g
        let probs: [Float] = want.withUnsafeMutableBufferPointer { w in
            for r in 0..<rows { FastLoops.softmaxRow(w.baseAddress! + r * L, L) }
            return Array(w)
        }
        wantDS.withUnsafeMutableBufferPointer { d in probs.withUnsafeBufferPointer { p in
            for r in 0..<rows { FastLoops.softmaxBackwardRow(d.baseAddress! + r * L, p.baseAddress! + r * L, L) }
        } }
        eachISA { isa in
            var got = s, gotDS = g
            got.withUnsafeMutableBufferPointer { p in
                sddit_fast_softmax_rows(p.baseAddress!, L, 0, 4); sddit_fast_softmax_rows(p.baseAddress!, L, 4, rows)
            }
            gotDS.withUnsafeMutableBufferPointer { d in probs.withUnsafeBufferPointer { p in
                sddit_fast_softmax_backward_rows(d.baseAddress!, p.baseAddress!, L, 0, rows)
            } }
            let m = firstMismatch(got, want, s), mb = firstMismatch(gotDS, wantDS, g)
            #expect(m == nil, "softmax rows (\(isa), L = \(L)) differ from the Swift loop at \(m ?? "")")
            #expect(mb == nil, "softmax backward rows (\(isa), L = \(L)) differ from the Swift loop at \(mb ?? "")")
        }
    }

    @Test func adamWMatchesItsDefinition() {
        let n = 5_003
        let p0 = inputs(n, seed: 11).prefix(n).map { $0 }, g = inputs(n, seed: 12).prefix(n).map { $0 / 8 }
        let m0 = inputs(n, seed: 13).prefix(n).map { $0 / 100 }, v0 = inputs(n, seed: 14).prefix(n).map { $0 * $0 / 1000 }
        // step 3 of lr 1e-4, wd 0.01, betas (0.9, 0.999), eps 1e-8 (bias corrections as FastAdamW makes them)
        let lr: Float = 1e-4, b1: Float = 0.9, b2: Float = 0.999
        let h: [Float] = [1 - lr * 0.01, b1, 1 - b1, b2, 1 - b2, lr / (1 - powf(b1, 3)), (1 - powf(b2, 3)).squareRoot(), 1e-8]
        for kept in [true, false] {
            var wp = p0, wm = kept ? m0 : [Float](repeating: 0, count: n), wv = kept ? v0 : [Float](repeating: 0, count: n)
            for i in 0..<n { FastLoops.adamW(p: &wp[i], g: g[i], m: &wm[i], v: &wv[i], h) }
            eachISA { isa in
                var p = p0, m = m0, v = v0
                p.withUnsafeMutableBufferPointer { pp in m.withUnsafeMutableBufferPointer { mp in v.withUnsafeMutableBufferPointer { vp in
                    for (lo, hi) in [(0, 777), (777, n)] {
                        sddit_fast_adamw(pp.baseAddress!, g, kept ? mp.baseAddress! : nil, kept ? vp.baseAddress! : nil, h, lo, hi)
                    }
                } } }
                let mp = firstMismatch(p, wp, p0)
                #expect(mp == nil, "AdamW parameters (\(isa), moments \(kept ? "kept" : "from zero")) differ from the Swift definition at \(mp ?? "")")
                if kept {
                    #expect(firstMismatch(m, wm, m0) == nil && firstMismatch(v, wv, v0) == nil, "AdamW moments (\(isa)) differ from the Swift definition")
                } else {
                    #expect(m == m0 && v == v0, "AdamW without moments wrote to them")
                }
            }
        }
    }
}
