import Foundation
import PropertyBased
import SDDiTReference
import Testing
import TestSupport

// Property tests of the reference's mathematical identities (SPEC §2-§5): each test
// states the identity, the tolerance and why. Random shapes and values come from
// swift-property-based generators; a failure prints the input and a `.fixedSeed(...)`
// to reproduce it. Expected values are computed here by an independent path (the
// textbook formula), never copied from a run.

/// Double's unit roundoff (2^-53).
private let u = Double.ulpOfOne / 2

// MARK: - helpers (prefixed `prop` so they cannot collide with Support.swift)

private func propNormals(_ shape: [Int], _ rng: inout SeededRandom, std: Double = 1) -> Tensor<Double> {
    Tensor(shape: shape, data: rng.normals(shape.reduce(1, *), std: std))
}

/// max |a_i|, NaN when any a_i is NaN (TestSupport's `maxAbsOrNaN`).
private func propMaxAbs(_ a: [Double]) -> Double { maxAbsOrNaN(a) }

/// Largest |a - b| and its flat index; NaN at the first NaN difference. Arrays of different
/// lengths are an issue of their own (recorded here) and give NaN at index 0, so that every
/// check on the difference fails.
private func propMaxDiff(_ a: [Double], _ b: [Double], sourceLocation: SourceLocation = #_sourceLocation) -> (diff: Double, index: Int) {
    guard a.count == b.count else {
        Issue.record("compared arrays of \(a.count) and \(b.count) elements", sourceLocation: sourceLocation)
        return (.nan, 0)
    }
    var worst = 0.0, at = 0
    for i in 0..<a.count where abs(a[i] - b[i]) > worst || (abs(a[i] - b[i])).isNaN {
        worst = abs(a[i] - b[i]); at = i
        if worst.isNaN { break }
    }
    return (worst, at)
}

/// Random parameters for one adaLN-Zero block of width W with a conditioning width D,
/// every tensor non-zero (as LayerGradientTests.ditBlock builds them).
private func propBlockParameters(prefix: String, W: Int, D: Int, seed: UInt64, std: Double = 0.3) -> Parameters<Double> {
    var rng = SeededRandom(seed: seed)
    let shapes: [(String, [Int])] = [("attn.qkv.weight", [3 * W, W]), ("attn.qkv.bias", [3 * W]),
                                     ("attn.proj.weight", [W, W]), ("attn.proj.bias", [W]),
                                     ("mlp.fc1.weight", [4 * W, W]), ("mlp.fc1.bias", [4 * W]),
                                     ("mlp.fc2.weight", [W, 4 * W]), ("mlp.fc2.bias", [W]),
                                     ("adaLN_modulation.1.weight", [6 * W, D]), ("adaLN_modulation.1.bias", [6 * W])]
    var P = Parameters<Double>()
    for (k, s) in shapes { P[prefix + k] = propNormals(s, &rng, std: std) }
    return P
}

/// out[n, perm[l], :] = x[n, l, :] for x [N, L, W].
private func propPermuteTokens(_ x: Tensor<Double>, _ perm: [Int]) -> Tensor<Double> {
    let N = x.shape[0], L = x.shape[1], W = x.lastDim
    var out = x
    for n in 0..<N { for l in 0..<L { for i in 0..<W {
        out.data[(n * L + perm[l]) * W + i] = x.data[(n * L + l) * W + i]
    } } }
    return out
}

/// Image [N, C, H, W] whose patch perm[t] is the input's patch t (patch p, token t = row * g + col).
private func propPermutePatches(_ x: Tensor<Double>, _ perm: [Int], p: Int) -> Tensor<Double> {
    let N = x.shape[0], C = x.shape[1], H = x.shape[2], g = H / p
    var out = x
    for n in 0..<N { for c in 0..<C { for t in 0..<(g * g) { for i in 0..<p { for j in 0..<p {
        let src = ((n * C + c) * H + (t / g) * p + i) * H + (t % g) * p + j
        let dst = ((n * C + c) * H + (perm[t] / g) * p + i) * H + (perm[t] % g) * p + j
        out.data[dst] = x.data[src]
    } } } } }
    return out
}

/// Rows of a [1, R, W] (or [R, W]) table moved: out row off + perm[t] = in row off + t.
private func propPermuteRows(_ x: Tensor<Double>, _ perm: [Int], offset: Int) -> Tensor<Double> {
    let W = x.lastDim
    var out = x
    for t in 0..<perm.count { for i in 0..<W {
        out.data[(offset + perm[t]) * W + i] = x.data[(offset + t) * W + i]
    } }
    return out
}

@Suite("Properties of the reference (identities of SPEC §2-§5)")
struct PropertyTests {

    // MARK: EDM (SPEC §3-4)

    /// lambda(s) c_out(s)^2 = 1 and c_skip + (c_out/sd)^2 = 1, c_in^2 (s^2 + sd^2) = 1,
    /// c_noise = ln(s)/4, for log-uniform s in [0.002, 80].
    /// Tolerance 1e-14 relative: each side is a handful of correctly rounded operations
    /// (<= ~8 roundings of 2^-53 each, ~1e-15), so 1e-14 leaves a 10x margin while a
    /// wrong formula (e.g. a missing square) is off by O(1).
    @Test func edmCoefficientIdentities() async {
        let logRange = Double.log(0.002)...Double.log(80)
        await propertyCheck(count: 500, input: Gen.double(in: logRange).map { Double.exp($0) },
                            Gen.double(in: 0.1...2)) { s, sd in
            let c = EDMCoefficients<Double>(sigma: s, sigmaData: sd)
            let lam = EDMCoefficients<Double>.lossWeight(sigma: s, sigmaData: sd)
            let one1 = lam * c.cOut * c.cOut
            #expect(abs(one1 - 1) <= 1e-14, "lambda(s) c_out(s)^2 = \(one1) at s = \(s), sd = \(sd); expected 1")
            let one2 = c.cSkip + (c.cOut / sd) * (c.cOut / sd)
            #expect(abs(one2 - 1) <= 1e-14, "c_skip + (c_out/sd)^2 = \(one2) at s = \(s), sd = \(sd); expected 1")
            let one3 = c.cIn * c.cIn * (s * s + sd * sd)
            #expect(abs(one3 - 1) <= 1e-14, "c_in^2 (s^2+sd^2) = \(one3) at s = \(s), sd = \(sd); expected 1")
            #expect(abs(c.cNoise - Foundation.log(s) / 4) <= 1e-14 * max(1, abs(c.cNoise)),
                    "c_noise = \(c.cNoise) at s = \(s), expected ln(s)/4 = \(Foundation.log(s) / 4)")
        }
    }

    /// s -> 0: c_skip -> 1 with 1 - c_skip = s^2/(s^2+sd^2), and c_out/s -> 1/sqrt(1+s^2/sd^2) -> 1.
    /// Tolerance: c_skip ~ 1 is rounded to within u absolute, so 1 - c_skip is compared with
    /// s^2/(s^2+sd^2) to 4 u absolute (+ 1e-12 relative); c_out/s vs its closed form to
    /// 1e-14 (a few roundings). Monotonicity is exact (correctly rounded operations on
    /// monotone arguments).
    @Test func edmSmallSigmaLimit() {
        let sd = 0.5
        var last = (skip: 0.0, out: Double.infinity)
        for e in 1...12 {
            let s = Foundation.pow(10, -Double(e))
            let c = EDMCoefficients<Double>(sigma: s, sigmaData: sd)
            let oneMinusSkip = 1 - c.cSkip, expected = s * s / (s * s + sd * sd)
            #expect(abs(oneMinusSkip - expected) <= 4 * u + 1e-12 * expected,
                    "1 - c_skip = \(oneMinusSkip) at s = \(s), expected s^2/(s^2+sd^2) = \(expected)")
            let outOverS = c.cOut / s, expOut = 1 / (1 + s * s / (sd * sd)).squareRoot()
            #expect(abs(outOverS - expOut) <= 1e-14, "c_out/s = \(outOverS) at s = \(s), expected \(expOut)")
            #expect(c.cSkip >= last.skip, "c_skip not monotone towards 1: \(c.cSkip) at s = \(s) after \(last.skip)")
            #expect(c.cOut < last.out, "c_out not decreasing towards 0: \(c.cOut) at s = \(s) after \(last.out)")
            last = (c.cSkip, c.cOut)
        }
        #expect(last.skip == 1, "c_skip(1e-12) = \(last.skip), expected 1 to double precision")
        #expect(last.out < 1e-11, "c_out(1e-12) = \(last.out), expected ~1e-12")
    }

    /// D(x; s) - x = (c_skip - 1) x + c_out F(c_in x; c_noise) = O(s): for the tiny model
    /// with random parameters, |D - x| / s stays O(1) and shrinks ~10x per decade of s.
    /// F itself depends on c_noise = ln(s)/4, which changes by 0.58 per decade, so the
    /// ratio is not constant: each per-decade reduction must lie in [10/2, 10*2], i.e. a
    /// log-log slope within log10(2) = 0.3 of 1 (a D that kept an O(1) part of F, or
    /// used c_out ~ sqrt(s), would give 1 or sqrt(10)).
    @Test func denoiserTendsToIdentity() {
        let cfg = ModelConfig.tiny
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 7)
        var rng = SeededRandom(seed: 11)
        let x = propNormals([2, cfg.inChannels, cfg.inputSize, cfg.inputSize], &rng, std: 0.5)
        var errs: [Double] = []
        for s in [1e-2, 1e-3, 1e-4] {
            let D = Denoiser.evaluate(cfg, P, x: x, sigma: [s, s], labels: [3, 7])
            let e = propMaxDiff(D.data, x.data).diff
            errs.append(e)
            print(String(format: "D -> x: sigma %.0e  max|D - x| %.3e  max|D - x|/sigma %.4f", s, e, e / s))
            #expect(e / s < 50 && e / s > 1e-3, "max|D - x|/sigma = \(e / s) at sigma = \(s): not O(1)")
        }
        for k in 0..<(errs.count - 1) {
            let r = errs[k] / errs[k + 1]
            #expect(r >= 5 && r <= 20, "max|D - x| shrinks \(r)x from sigma = 1e-\(k + 2) to 1e-\(k + 3) (\(errs[k]) -> \(errs[k + 1])); expected ~10x (first order in sigma)")
        }
    }

    // MARK: Attention (SPEC §2.6)

    /// Softmax rows of P [N, heads, L, L] are non-negative and sum to 1; P and y = P v
    /// equal an independent computation softmax(q k^T / sqrt(hd)).
    /// Tolerances: a row sum of L terms rounds to within L u of 1 (1e-14 covers L <= 12
    /// with margin); P and y against the reference 1e-13 (|logits| <= ~30 here, exp
    /// amplifies its argument's rounding ~30 u, and the two paths sum in different orders).
    @Test func attentionRowsSumToOne() async {
        await propertyCheck(count: 60, input: Gen.int(in: 1...2), Gen.int(in: 1...12), Gen.int(in: 1...4),
                            Gen.int(in: 1...5), Gen.uint64(in: 0...UInt64.max)) { N, L, heads, hd, seed in
            let W = heads * hd
            var rng = SeededRandom(seed: seed)
            let qkv = propNormals([N, L, 3 * W], &rng, std: 1.5)
            let (y, saved) = Attention.forward(qkv, heads: heads)
            #expect(y.shape == [N, L, W], "y shape \(y.shape), expected \([N, L, W])")
            #expect(saved.probs.count == N * heads * L * L, "probs count \(saved.probs.count), expected \(N * heads * L * L)")
            guard saved.probs.count == N * heads * L * L else { return }
            func at(_ n: Int, _ l: Int, _ part: Int, _ h: Int, _ d: Int) -> Double {
                qkv.data[((n * L + l) * 3 + part) * W + h * hd + d]
            }
            for n in 0..<N { for h in 0..<heads { for i in 0..<L {
                let row = Array(saved.probs[(((n * heads + h) * L + i) * L)..<(((n * heads + h) * L + i + 1) * L)])
                let sum = row.reduce(0, +)
                #expect(abs(sum - 1) <= 1e-14, "attention row [n \(n), head \(h), i \(i)] sums to \(sum), expected 1 (L = \(L))")
                #expect(row.allSatisfy { $0 >= 0 && $0 <= 1 }, "attention row [n \(n), head \(h), i \(i)] has entries outside [0, 1]: \(row)")
                // independent softmax(q k^T / sqrt(hd))
                let logits = (0..<L).map { j in
                    (0..<hd).reduce(0.0) { $0 + at(n, i, 0, h, $1) * at(n, j, 1, h, $1) } / Double(hd).squareRoot()
                }
                let mx = logits.max()!
                let ex = logits.map { Foundation.exp($0 - mx) }, z = ex.reduce(0, +)
                let ref = ex.map { $0 / z }
                let (dp, jp) = propMaxDiff(row, ref)
                #expect(dp <= 1e-13, "P[n \(n), head \(h), i \(i), j \(jp)] = \(row[jp]), softmax(qk^T/sqrt(hd)) = \(ref[jp])")
                for d in 0..<hd {
                    let yr = (0..<L).reduce(0.0) { $0 + ref[$1] * at(n, $1, 2, h, d) }
                    let yv = y.data[(n * L + i) * W + h * hd + d]
                    #expect(abs(yv - yr) <= 1e-13, "y[n \(n), i \(i), channel \(h * hd + d)] = \(yv), P v = \(yr)")
                }
            } } }
        }
    }

    // MARK: DINO cross-entropy (SPEC §4)

    /// Gibbs: H(q, softmax(s/tau_S)) >= H(q) = -sum q log q, with equality iff
    /// s/tau_S = (t - c)/tau_T + a_r (any per-row constant a_r). Also q is
    /// softmax((t - c)/tau_T) by an independent computation, and the gradient vanishes at
    /// the equality point.
    /// Tolerance: both sides are sums of q_k * (logit - lse) with |logit| <= Z = max
    /// |(t - c)/tau_T| + |a_r|; each term carries ~4 u Z of rounding, and sum q = 1, so the
    /// error is <= ~8 u Z; we allow 16 u (1 + Z) (measured: at most ~1 u (1 + Z)).
    @Test func crossEntropyGibbs() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...4), Gen.int(in: 2...64), Gen.double(in: 0.05...0.5),
                            Gen.double(in: 0.04...0.2), Gen.uint64(in: 0...UInt64.max)) { R, K, tauS, tauT, seed in
            var rng = SeededRandom(seed: seed)
            let t = propNormals([R, K], &rng), c = propNormals([K], &rng, std: 0.3)
            let s = propNormals([R, K], &rng, std: 0.5)
            let a = rng.normals(R, std: 3)
            let q = DINOCrossEntropy.teacherProbs(t, center: c, tauT: tauT)
            var entropy = 0.0, Z = 0.0
            var s2 = s
            for r in 0..<R {
                let z = (0..<K).map { (t.data[r * K + $0] - c.data[$0]) / tauT }
                Z = max(Z, propMaxAbs(z) + abs(a[r]))
                let mx = z.max()!, ex = z.map { Foundation.exp($0 - mx) }, sum = ex.reduce(0, +)
                let lse = mx + Foundation.log(sum)
                for k in 0..<K {
                    let qk = ex[k] / sum
                    #expect(abs(q.data[r * K + k] - qk) <= 1e-14 * (1 + Z) * max(qk, 1e-300) + 1e-300,
                            "teacherProbs[\(r), \(k)] = \(q.data[r * K + k]), softmax((t - c)/tau_T) = \(qk)")
                    entropy -= qk * (z[k] - lse)
                    s2.data[r * K + k] = tauS * (z[k] + a[r])
                }
            }
            entropy /= Double(R)
            let tol = 16 * u * (1 + Z)
            let H = DINOCrossEntropy.forward(student: s, teacherProbs: q, tauS: tauS)
            #expect(H >= entropy - tol, "H(T, S) = \(H) < H(q) = \(entropy) (R \(R), K \(K), tau_S \(tauS), tau_T \(tauT))")
            let Heq = DINOCrossEntropy.forward(student: s2, teacherProbs: q, tauS: tauS)
            #expect(abs(Heq - entropy) <= tol, "H at s/tau_S = (t-c)/tau_T + a_r is \(Heq), H(q) = \(entropy), diff \(Heq - entropy) > \(tol)")
            var ds = Tensor<Double>.zeros(like: s2)
            DINOCrossEntropy.backward(dL: 1, student: s2, teacherProbs: q, tauS: tauS, ds: &ds)
            let g = propMaxAbs(ds.data)
            #expect(g <= tol / tauS, "dH/ds at the minimum: max |.| = \(g), expected ~0 (<= \(tol / tauS))")
        }
    }

    // MARK: Permutation equivariance (SPEC §2.6)

    /// A DiT block has no position information: forward(x[:, perm]) = forward(x)[:, perm].
    /// Tolerance 1e-13 relative to max|y|: only the attention sums over tokens change
    /// order; each output is a sum of L <= 9 O(1) terms through O(1)-gain layers, so the
    /// orders differ by a few u per layer.
    @Test func ditBlockPermutationEquivariance() async {
        await propertyCheck(count: 40, input: Gen.int(in: 1...2), Gen.int(in: 2...9), Gen.int(in: 1...3),
                            Gen.int(in: 1...4), Gen.int(in: 1...6), Gen.uint64(in: 0...UInt64.max)) { N, L, heads, hd, D, seed in
            let W = heads * hd, prefix = "blocks.0."
            let P = propBlockParameters(prefix: prefix, W: W, D: D, seed: seed)
            var rng = SeededRandom(seed: seed &+ 1)
            let x = propNormals([N, L, W], &rng), sc = propNormals([N, D], &rng)
            let perm = rng.permutation(L)
            let block = DiTBlock(prefix: prefix, heads: heads)
            let y = block.forward(x, siluC: sc, P).0
            let yp = block.forward(propPermuteTokens(x, perm), siluC: sc, P).0
            let expected = propPermuteTokens(y, perm)
            let (d, i) = propMaxDiff(yp.data, expected.data)
            let scale = max(1, propMaxAbs(y.data))
            #expect(d <= 1e-13 * scale, "DiTBlock(x[:, perm])\(unravel(i, yp.shape)) = \(yp.data[i]), DiTBlock(x)[:, perm] = \(expected.data[i]), perm \(perm)")
            // and the permutation matters: the block mixes tokens (not a per-token map),
            // so the test is not vacuous: the unpermuted output differs from the permuted.
            if perm != Array(0..<L) {
                #expect(propMaxDiff(yp.data, y.data).diff > 1e-6, "permuting tokens left DiTBlock's output in place: perm \(perm)")
            }
        }
    }

    /// Model level. The model adds position embeddings before it gathers the visible
    /// tokens, so permuting the visible tokens alone is not a symmetry. What is: move
    /// patch t of x0, n_S, n_T to position perm[t], move rows 1+t of pos_embed (student
    /// and teacher) and row t of decoder_pos_embed the same way, and the mask entries.
    /// Then every token (content + position) is the same vector at a new position; the
    /// visible tokens enter the encoder in a different order (ascending new positions),
    /// so the encoder/decoder activations are the old ones with rows permuted, D is the
    /// old D with patches moved, and the losses and centers are unchanged.
    /// Tolerances: `student.tokens` rows are computed by the same operations, so equal
    /// bit-for-bit; after attention 1e-13 relative to each tensor's max (rounding of
    /// reordered token sums through 2 + 2 blocks and the head; measured <= 4e-16).
    @Test func modelPermutationSymmetry() throws {
        let cfg = ModelConfig.tiny
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 21)
        let TP: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 22).subset(cfg.teacherParameters)
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: 2, maskRatio: 0.5, seed: 23)
        var rng = SeededRandom(seed: 24)
        let Tn = cfg.tokens, perm = rng.permutation(Tn), p = cfg.patchSize
        var P2 = P, TP2 = TP, I2 = I
        P2["pos_embed"] = propPermuteRows(P["pos_embed"], perm, offset: 1)
        TP2["pos_embed"] = propPermuteRows(TP["pos_embed"], perm, offset: 1)
        P2["decoder_pos_embed"] = propPermuteRows(P["decoder_pos_embed"], perm, offset: 0)
        I2.x0 = propPermutePatches(I.x0, perm, p: p)
        I2.noiseS = propPermutePatches(I.noiseS, perm, p: p)
        I2.noiseT = propPermutePatches(I.noiseT, perm, p: p)
        I2.mask = I.mask.map { row in var m = row; for t in 0..<Tn { m[perm[t]] = row[t] }; return m }
        let r1 = try Objective.run(cfg, student: P, teacher: TP, inputs: I, gradients: false)
        let r2 = try Objective.run(cfg, student: P2, teacher: TP2, inputs: I2, gradients: false)
        let keep1 = try visibleIndices(mask: I.mask, tokens: Tn), keep2 = try visibleIndices(mask: I2.mask, tokens: Tn)
        let N = I.x0.shape[0], V = keep1[0].count

        // row maps: new row -> old row
        let tokenMap = (0..<N).map { _ in (0..<Tn).map { t2 in perm.firstIndex(of: t2)! } }
        let visMap = (0..<N).map { n in keep2[n].map { t2 in keep1[n].firstIndex(of: tokenMap[n][t2])! } }

        func compare(_ name: String, rows: Int, offset: Int, map: [[Int]], exact: Bool = false) {
            guard let a = r1.activations[name], let b = r2.activations[name] else {
                Issue.record("activation \(name) missing"); return
            }
            let Wd = a.lastDim, scale = max(1, propMaxAbs(a.data))
            var worst = 0.0, at = ""
            for n in 0..<N {
                // (new row, old row); with a CLS slot (offset 1) row 0 maps to itself
                let pairs = (offset == 1 ? [(0, 0)] : []) + (0..<map[n].count).map { (offset + $0, offset + map[n][$0]) }
                for (r2i, r1i) in pairs { for i in 0..<Wd {
                    let d = abs(b.data[(n * rows + r2i) * Wd + i] - a.data[(n * rows + r1i) * Wd + i])
                    if d > worst || d.isNaN { worst = d; at = "[n \(n), new row \(r2i) <- old row \(r1i), channel \(i)]" }
                } }
            }
            let tol = exact ? 0 : 1e-13 * scale
            #expect(worst <= tol, "\(name) under the token permutation: max diff \(worst) at \(at) (tolerance \(tol))")
        }
        compare(ActivationName.tokens, rows: Tn, offset: 0, map: tokenMap, exact: true)
        for i in 0..<cfg.depth {
            compare(ActivationName.encBlock(i), rows: 1 + V, offset: 1, map: visMap)
            compare(ActivationName.teacherEncBlock(i), rows: 1 + Tn, offset: 1, map: tokenMap)
        }
        compare(ActivationName.decIn, rows: Tn, offset: 0, map: tokenMap)
        for i in 0..<cfg.decoderDepth { compare(ActivationName.decBlock(i), rows: Tn, offset: 0, map: tokenMap) }
        compare(ActivationName.headPatch, rows: V, offset: 0, map: visMap)
        compare(ActivationName.teacherHeadPatch, rows: V, offset: 0, map: visMap)
        for name in [ActivationName.headCls, ActivationName.teacherHeadCls] {
            let d = propMaxDiff(r1.activations[name]!.data, r2.activations[name]!.data)
            #expect(d.diff <= 1e-13, "\(name)[\(d.index)] changes by \(d.diff) under the token permutation")
        }
        if let D1 = r1.activations[ActivationName.D], let D2 = r2.activations[ActivationName.D] {
            let moved = propPermutePatches(D1, perm, p: p)
            let d = propMaxDiff(D2.data, moved.data)
            #expect(d.diff <= 1e-13 * max(1, propMaxAbs(D1.data)),
                    "student.D\(unravel(d.index, D2.shape)) = \(D2.data[d.index]), old D with patches moved = \(moved.data[d.index])")
        } else { Issue.record("student.D missing") }
        for name in LossName.all {
            let a = r1.losses[name]!, b = r2.losses[name]!
            #expect(abs(a - b) <= 1e-13 * max(1, abs(a)), "loss \(name): \(a) vs \(b) after the token permutation")
        }
        let dc = propMaxDiff(r1.newCenterPatch.data, r2.newCenterPatch.data)
        #expect(dc.diff <= 1e-13, "new center_patch[\(dc.index)] changes by \(dc.diff) under the token permutation")
        // the permutation is not the identity, and it does move the mask
        #expect(perm != Array(0..<Tn) && I2.mask != I.mask, "test permutation \(perm) does not move the mask")
    }

    // MARK: Mask ratio 0 (SPEC §2.10)

    /// With every token visible, the training path's D equals the inference path's
    /// D(x0 + sigma_S n_S; sigma_S) from Denoiser.evaluate. Both run the same operations
    /// in the same order, so they agree bit-for-bit today; tolerance 1e-14 relative to
    /// max|D| allows only a benign reordering of a sum, not any modelling difference.
    @Test func unmaskedTrainingMatchesInference() throws {
        let cfg = ModelConfig.tiny
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 31)
        let TP: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 32).subset(cfg.teacherParameters)
        var I: StepInputs<Double> = Initialization.inputs(cfg, batch: 3, maskRatio: 0, seed: 33)
        #expect(I.mask.allSatisfy { $0.allSatisfy { $0 == 0 } }, "Initialization.inputs(maskRatio: 0) hides tokens: \(I.mask)")
        I.mask = Array(repeating: Array(repeating: 0, count: cfg.tokens), count: 3)
        let r = try Objective.run(cfg, student: P, teacher: TP, inputs: I, gradients: false)
        var xS = I.x0
        let per = xS.count / 3
        for n in 0..<3 { for i in 0..<per { xS.data[n * per + i] = I.x0.data[n * per + i] + I.sigmaS[n] * I.noiseS.data[n * per + i] } }
        let D = Denoiser.evaluate(cfg, P, x: xS, sigma: I.sigmaS, labels: I.labels)
        guard let Dt = r.activations[ActivationName.D] else { Issue.record("student.D missing"); return }
        #expect(Dt.shape == D.shape, "student.D shape \(Dt.shape) vs Denoiser \(D.shape)")
        let d = propMaxDiff(Dt.data, D.data)
        #expect(d.diff <= 1e-14 * max(1, propMaxAbs(D.data)),
                "student.D\(unravel(d.index, D.shape)) = \(Dt.data[d.index]) vs Denoiser.evaluate = \(D.data[d.index]) (mask ratio 0)")
        // and the generative loss is EDM's weighted MSE of that D (recomputed here).
        var LG = 0.0
        for n in 0..<3 {
            let s = I.sigmaS[n], sd = cfg.sigmaData, lam = (s * s + sd * sd) / (s * sd * s * sd)
            for i in 0..<per { let e = D.data[n * per + i] - I.x0.data[n * per + i]; LG += lam * e * e }
        }
        LG /= Double(D.count)
        let lg = r.losses[LossName.generative]!
        #expect(abs(lg - LG) <= 1e-13 * LG, "generative loss \(lg) vs mean lambda (D - x0)^2 = \(LG)")
    }

    // MARK: EMA (SPEC §5)

    /// beta = 1 keeps the teacher bit-for-bit (1 t + 0 s = t exactly for finite s);
    /// beta = 0 copies the student's encoder + head (0 t + 1 s = s exactly); the teacher's
    /// key set never changes (no decoder keys appear). 0 <= beta <= 1 gives the convex
    /// combination s + beta (t - s) (computed here in that other form): within
    /// 4 u (|t| + |s|) of it (a few roundings on either path), hence within [min, max] of
    /// (t, s) up to the same slack.
    @Test func emaExtremes() async {
        let cfg = ModelConfig.tiny
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 41)
        let T0: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 42).subset(cfg.teacherParameters)
        var T1 = T0
        EMA.update(teacher: &T1, student: P, beta: 1)
        #expect(Set(T1.tensors.keys) == Set(T0.tensors.keys), "EMA(beta 1) changed the teacher's keys")
        for (k, t) in T0.tensors {
            #expect(T1[k].data == t.data, "EMA(beta 1) changed teacher \(k): first diff at \(propMaxDiff(T1[k].data, t.data))")
        }
        var T2 = T0
        EMA.update(teacher: &T2, student: P, beta: 0)
        #expect(Set(T2.tensors.keys) == Set(cfg.teacherParameters.map(\.key)), "EMA(beta 0) teacher keys differ from the teacher spec")
        for k in T0.tensors.keys {
            #expect(T2[k].data == P[k].data, "EMA(beta 0) teacher \(k) is not the student's: \(propMaxDiff(T2[k].data, P[k].data))")
        }
        await propertyCheck(count: 20, input: Gen.double(in: 0...1)) { beta in
            var T3 = T0
            EMA.update(teacher: &T3, student: P, beta: beta)
            for k in ["blocks.0.attn.qkv.weight", "cls_token", "head.last_layer.weight_v"] {
                for i in 0..<T0[k].count {
                    let t = T0[k].data[i], s = P[k].data[i], e = T3[k].data[i]
                    let ref = s + beta * (t - s), slack = 4 * u * (abs(t) + abs(s))
                    #expect(e >= min(t, s) - slack && e <= max(t, s) + slack && abs(e - ref) <= slack,
                            "EMA(beta \(beta)) \(k)[\(i)] = \(e), s + beta (t - s) = \(ref) (t \(t), s \(s))")
                }
            }
        }
    }

    // MARK: LayerNorm (SPEC §2.6)

    /// Row mean 0 and biased variance v/(v + eps) (v the input row's biased variance, eps
    /// 1e-6), i.e. 1 up to the eps effect eps/v.
    /// Tolerances: mean: y_i = (x_i - m) r carries ~3 u (1 + |m|/sigma) relative error on
    /// each |y_i| <= sqrt(W), so |mean y| <= 8 u sqrt(W) (1 + |m|/sigma); variance:
    /// 2e-14 relative (sums of W <= 64 squares, W u ~ 7e-15; measured <= 1.2e-15).
    @Test func layerNormStandardizes() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...5), Gen.int(in: 2...64),
                            Gen.double(in: -3...2).map { Foundation.pow(10, $0) }, Gen.double(in: -3...3),
                            Gen.uint64(in: 0...UInt64.max)) { R, W, scale, offset, seed in
            var rng = SeededRandom(seed: seed)
            let x = Tensor(shape: [R, W], data: rng.normals(R * W, std: scale).map { $0 + offset })
            let y = LayerNorm.forward(x).y
            for r in 0..<R {
                let xr = Array(x.data[(r * W)..<((r + 1) * W)]), yr = Array(y.data[(r * W)..<((r + 1) * W)])
                let m = xr.reduce(0, +) / Double(W)
                let v = xr.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(W)
                let my = yr.reduce(0, +) / Double(W)
                let vy = yr.reduce(0) { $0 + ($1 - my) * ($1 - my) } / Double(W)
                let tolMean = 8 * u * Double(W).squareRoot() * (1 + abs(m) / max(v.squareRoot(), 1e-300))
                #expect(abs(my) <= tolMean, "LayerNorm row \(r) mean \(my) (W \(W), scale \(scale), offset \(offset)); tolerance \(tolMean)")
                let expVar = v / (v + 1e-6)
                #expect(abs(vy - expVar) <= 2e-14 * expVar + tolMean,
                        "LayerNorm row \(r) variance \(vy), expected v/(v+eps) = \(expVar) (v \(v))")
                #expect(abs(vy - 1) <= 1e-6 / v + 1e-13, "LayerNorm row \(r) variance \(vy) differs from 1 by more than eps/v = \(1e-6 / v)")
            }
        }
    }

    // MARK: Head normalizations (SPEC §4)

    /// L2Normalize: each output row has norm 1 and the returned norms are ||x_r||;
    /// a zero row stays zero (eps 1e-12). Tolerance 1e-14: a norm of W <= 64 terms,
    /// (W + 4) u ~ 8e-15.
    @Test func l2NormalizeUnitRows() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...5), Gen.int(in: 1...64),
                            Gen.double(in: -6...6).map { Foundation.pow(10, $0) }, Gen.uint64(in: 0...UInt64.max)) { R, W, scale, seed in
            var rng = SeededRandom(seed: seed)
            var x = propNormals([R + 1, W], &rng, std: scale)
            for i in 0..<W { x.data[R * W + i] = 0 }   // last row zero
            let (y, norms) = L2Normalize.forward(x)
            for r in 0..<R {
                let nx = (0..<W).reduce(0.0) { $0 + x.data[r * W + $1] * x.data[r * W + $1] }.squareRoot()
                let ny = (0..<W).reduce(0.0) { $0 + y.data[r * W + $1] * y.data[r * W + $1] }.squareRoot()
                #expect(abs(ny - 1) <= 1e-14, "||L2Normalize(x)[\(r)]|| = \(ny), expected 1 (W \(W), scale \(scale))")
                #expect(abs(norms[r] - nx) <= 1e-14 * nx, "L2Normalize norms[\(r)] = \(norms[r]), ||x_r|| = \(nx)")
            }
            #expect(y.data[(R * W)...].allSatisfy { $0 == 0 }, "L2Normalize of a zero row is not zero")
        }
    }

    /// WeightNormLinear.weight: row k has norm |g_k| and direction sign(g_k) v_k/||v_k||.
    /// Tolerance 1e-14 relative: as for L2Normalize.
    @Test func weightNormRows() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...16), Gen.int(in: 1...32),
                            Gen.uint64(in: 0...UInt64.max)) { K, B, seed in
            var rng = SeededRandom(seed: seed)
            let v = propNormals([K, B], &rng, std: Foundation.pow(10, 2 * rng.uniform() - 1))
            let g = Tensor(shape: [K, 1], data: (0..<K).map { _ in (rng.uniform() * 3 + 0.1) * (rng.uniform() < 0.2 ? -1 : 1) })
            let w = WeightNormLinear.weight(v: v, g: g)
            for k in 0..<K {
                let nw = (0..<B).reduce(0.0) { $0 + w.data[k * B + $1] * w.data[k * B + $1] }.squareRoot()
                let nv = (0..<B).reduce(0.0) { $0 + v.data[k * B + $1] * v.data[k * B + $1] }.squareRoot()
                #expect(abs(nw - abs(g.data[k])) <= 1e-14 * abs(g.data[k]), "||weight[\(k)]|| = \(nw), expected |g_k| = \(abs(g.data[k]))")
                let dirErr = maxOrNaN((0..<B).map { abs(w.data[k * B + $0] / g.data[k] - v.data[k * B + $0] / nv) })
                #expect(dirErr <= 1e-14, "weight[\(k)]/g_k differs from v_k/||v_k|| by \(dirErr)")
            }
        }
    }

    // MARK: Position embeddings (SPEC §2.2)

    /// SinCosPosEmbed.table against MAE's get_2d_sincos_pos_embed recomputed here:
    /// channel block [0, q) sin(col w_k), [q, 2q) cos(col w_k), [2q, 3q) sin(row w_k),
    /// [3q, 4q) cos(row w_k), q = W/4, w_k = 1/10000^(k/q) (here as exp(-ln(10000) k/q),
    /// a different rounding path from pow); zero CLS row when clsRow.
    /// Tolerance 1e-13: w_k differs by ~2 u between the paths, the angle pos w_k <= 15
    /// then differs by ~1e-14 absolute, and sin/cos are 1-Lipschitz.
    @Test func sinCosTableMatchesSpec() async {
        await propertyCheck(count: 60, input: Gen.int(in: 1...16), Gen.int(in: 1...8), Gen.bool) { m, grid, clsRow in
            let W = 4 * m, q = m
            let tab: Tensor<Double> = SinCosPosEmbed.table(width: W, grid: grid, clsRow: clsRow)
            let rows = grid * grid + (clsRow ? 1 : 0)
            #expect(tab.shape == [1, rows, W], "table shape \(tab.shape), expected \([1, rows, W])")
            guard tab.shape == [1, rows, W] else { return }
            if clsRow { #expect(tab.data[0..<W].allSatisfy { $0 == 0 }, "CLS row of the table is not zero (W \(W), grid \(grid))") }
            var worst = 0.0, at = ""
            for t in 0..<(grid * grid) {
                let r0 = (clsRow ? 1 : 0) + t, col = Double(t % grid), row = Double(t / grid)
                for k in 0..<q {
                    let w = Foundation.exp(-Foundation.log(10000.0) * Double(k) / Double(q))
                    let expected = [(k, Foundation.sin(col * w)), (q + k, Foundation.cos(col * w)),
                                    (2 * q + k, Foundation.sin(row * w)), (3 * q + k, Foundation.cos(row * w))]
                    for (ch, e) in expected {
                        let d = abs(tab.data[r0 * W + ch] - e)
                        if d > worst { worst = d; at = "token \(t) (row \(Int(row)), col \(Int(col))), channel \(ch): table \(tab.data[r0 * W + ch]), formula \(e)" }
                    }
                }
            }
            #expect(worst <= 1e-13, "SinCosPosEmbed(W \(W), grid \(grid)) off SPEC §2.2 by \(worst) at \(at)")
        }
        // and the model's fixed tables are these tables
        let P: Parameters<Double> = Initialization.parameters(.tiny, mode: .random, seed: 1)
        let cfg = ModelConfig.tiny
        let pe: Tensor<Double> = SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true)
        let dpe: Tensor<Double> = SinCosPosEmbed.table(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false)
        #expect(P["pos_embed"].data == pe.data && P["pos_embed"].shape == [1, 1 + cfg.tokens, cfg.hiddenSize],
                "pos_embed \(P["pos_embed"].shape) is not the sin-cos table with a CLS row")
        #expect(P["decoder_pos_embed"].data == dpe.data && P["decoder_pos_embed"].shape == [1, cfg.tokens, cfg.decoderHiddenSize],
                "decoder_pos_embed \(P["decoder_pos_embed"].shape) is not the sin-cos table without a CLS row")
    }

    // MARK: Schedules (SPEC §5)

    /// ema beta: 0.996 at step 0, 0.999 at step = totalSteps (and clamped beyond), strictly
    /// increasing in between. Endpoint tolerance 2 u (one cos(0) = 1 and a few roundings);
    /// strictness is safe: the smallest step, near the ends, is 0.003 (pi/total)^2/4 >=
    /// 7e-11 for total <= 10^4, far above u.
    @Test func emaBetaSchedule() async {
        await propertyCheck(count: 30, input: Gen.int(in: 1...10_000)) { total in
            let b0 = Schedules.emaBeta(step: 0, totalSteps: total)
            let b1 = Schedules.emaBeta(step: total, totalSteps: total)
            #expect(abs(b0 - 0.996) <= 2 * u, "emaBeta(step 0, total \(total)) = \(b0), expected 0.996")
            #expect(abs(b1 - 0.999) <= 2 * u, "emaBeta(step total, total \(total)) = \(b1), expected 0.999")
            #expect(Schedules.emaBeta(step: total + 5, totalSteps: total) == b1, "emaBeta beyond total is not clamped to its final value")
            var prev = b0
            for s in 1...total {
                let b = Schedules.emaBeta(step: s, totalSteps: total)
                if !(b > prev) {
                    Issue.record("emaBeta not increasing: step \(s - 1) -> \(s) of \(total): \(prev) -> \(b)"); break
                }
                prev = b
            }
            // DINO cosine form at the midpoint: (base + final)/2
            if total % 2 == 0 {
                let mid = Schedules.emaBeta(step: total / 2, totalSteps: total)
                #expect(abs(mid - 0.9975) <= 4 * u, "emaBeta at the midpoint = \(mid), expected (0.996 + 0.999)/2")
            }
        }
    }

    /// tau_T: linspace(0.09, 0.099, warmup) then 0.099. Tolerance 2 u on ~0.1 values.
    @Test func tauTSchedule() async {
        await propertyCheck(count: 50, input: Gen.int(in: 2...2000)) { warm in
            let t0 = Schedules.tauT(step: 0, warmupSteps: warm)
            let tl = Schedules.tauT(step: warm - 1, warmupSteps: warm)
            #expect(abs(t0 - 0.09) <= 2e-17, "tauT(0, warmup \(warm)) = \(t0), expected 0.09")
            #expect(abs(tl - 0.099) <= 2e-17, "tauT(warmup-1 = \(warm - 1)) = \(tl), expected 0.099")
            var prev = t0
            for s in 1..<(warm + 3) {
                let v = Schedules.tauT(step: s, warmupSteps: warm)
                let lin = s < warm ? 0.09 + Double(s) * ((0.099 - 0.09) / Double(warm - 1)) : 0.099
                if abs(v - lin) > 2e-17 || v < prev {
                    Issue.record("tauT(step \(s), warmup \(warm)) = \(v), linspace value \(lin), previous \(prev)"); break
                }
                prev = v
            }
        }
        // DINO: linspace(0.09, 0.099, 1) = [0.09], then 0.099
        #expect(Schedules.tauT(step: 0, warmupSteps: 1) == 0.09, "tauT(0, warmup 1) = \(Schedules.tauT(step: 0, warmupSteps: 1)), expected 0.09")
        #expect(Schedules.tauT(step: 1, warmupSteps: 1) == 0.099, "tauT(1, warmup 1) = \(Schedules.tauT(step: 1, warmupSteps: 1)), expected 0.099")
    }

    // MARK: Visible indices (SPEC §2.4)

    /// visibleIndices returns, per row, the ascending positions of the zeros.
    @Test func visibleIndicesAscending() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...4), Gen.int(in: 1...32), Gen.uint64(in: 0...UInt64.max)) { N, T, seed in
            var rng = SeededRandom(seed: seed)
            let V = 1 + Int(rng.next() % UInt64(T))
            let mask = (0..<N).map { _ -> [Int] in
                var row = [Int](repeating: 1, count: T)
                for t in rng.permutation(T).prefix(V) { row[t] = 0 }
                return row
            }
            do {
                let keep = try visibleIndices(mask: mask, tokens: T)
                #expect(keep.count == N, "visibleIndices returned \(keep.count) rows for \(N)")
                for (n, k) in keep.enumerated() {
                    #expect(k == (0..<T).filter { mask[n][$0] == 0 }, "row \(n): \(k) is not the ascending list of zeros of \(mask[n])")
                    #expect(zip(k, k.dropFirst()).allSatisfy { $0 < $1 }, "row \(n) not strictly ascending: \(k)")
                }
            } catch {
                Issue.record("visibleIndices threw \(error) on a valid mask \(mask)")
            }
        }
    }

    /// Unequal visible counts, entries other than 0/1, wrong row length and an all-hidden
    /// row are rejected.
    @Test func visibleIndicesRejects() {
        let T = 6
        let bad: [(String, [[Int]])] = [
            ("unequal counts", [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]),
            ("value 2", [[0, 2, 1, 1, 1, 1]]),
            ("value -1", [[0, 0, 1, 1, 1, 1], [0, -1, 1, 1, 1, 0]]),
            ("short row", [[0, 0, 1, 1, 1]]),
            ("long row", [[0, 0, 1, 1, 1, 1, 1]]),
            ("all hidden", [[1, 1, 1, 1, 1, 1]]),
        ]
        for (what, m) in bad {
            #expect(throws: (any Error).self, "visibleIndices accepted a mask with \(what): \(m)") {
                _ = try visibleIndices(mask: m, tokens: T)
            }
        }
    }
}
