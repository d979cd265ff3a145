import Foundation
import Testing
import TestSupport
import SDDiTFast
import SDDiTReference

// Each fast kernel (float32, OpenBLAS) against its reference layer (float64) on the same
// float32 inputs, forward and backward, and the backward's contract: where the kernel adds
// into a gradient (`+=`), it adds into non-zero values.
//
// Tolerances are float32 error bounds, not fits: with u = 2^-24, a sum of K terms computed in
// any order is within K u sum|terms| of the exact sum (Higham, Thm 3.1: gamma_K), so a product
// is held to (K + 2) u (|A| |B| + |bias|), computed by the reference on absolute values. The
// element-wise and normalizing kernels are held to a few u of the size of their terms (their
// comments say how many). A wrong index, a missing term or a wrong constant is off by the size
// of a term, far outside any of these.

let u32 = 0x1p-24

/// A float32 buffer in a workspace filled with seeded values (float32-exact), and the same
/// values as a Double tensor.
func f32(_ ws: Workspace, _ name: String, _ shape: [Int], seed: UInt64, std: Double = 1) -> (FT, Tensor<Double>) {
    let t = ws.get(name, shape)
    let r = randomTensor(shape, seed: seed, std: std)
    for i in 0..<t.count { t.p[i] = Float(r.data[i]) }
    return (t, Tensor(shape: shape, data: (0..<t.count).map { Double(t.p[$0]) }))
}

func double(_ t: FT) -> Tensor<Double> { Tensor(shape: t.shape, data: t.array().map { Double($0) }) }
func absolute(_ t: Tensor<Double>) -> Tensor<Double> { Tensor(shape: t.shape, data: t.data.map { abs($0) }) }

/// Every element of `fast` within `bound[i]` of `ref` (the first miss is recorded with both
/// values, the absolute and relative error and the bound).
func expectWithin(_ name: String, _ fast: Tensor<Double>, _ ref: Tensor<Double>, bound: [Double],
                  sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(fast.shape.reduce(1, *) == ref.count, "\(name): \(fast.shape) vs \(ref.shape)", sourceLocation: sourceLocation)
    var worst = 0.0
    for i in 0..<ref.count {
        let err = abs(fast.data[i] - ref.data[i])
        worst = max(worst, err / max(bound[i], .leastNormalMagnitude))
        if !(err <= bound[i]) {
            Issue.record("\(name) at \(unravel(i, ref.shape)): fast \(fast.data[i]), reference \(ref.data[i]), abs err \(err), rel err \(err / max(abs(ref.data[i]), 1e-300)), bound \(bound[i])",
                         sourceLocation: sourceLocation)
            return
        }
    }
    Report.add("fast-kernels.txt", [String(format: "%@: worst use of its bound %.3f", name, worst)])
}

/// A kernel's `+=` output: result = start + fresh up to one float32 rounding of each.
func expectAddsF32(_ name: String, start: Tensor<Double>, fresh: Tensor<Double>, result: Tensor<Double>, slack: [Double],
                   sourceLocation: SourceLocation = #_sourceLocation) {
    for i in 0..<start.count {
        let want = start.data[i] + fresh.data[i], err = abs(result.data[i] - want)
        if !(err <= slack[i] + 2 * u32 * (abs(start.data[i]) + abs(fresh.data[i]))) {
            Issue.record("\(name) does not add into its gradient at \(unravel(i, start.shape)): start \(start.data[i]) + fresh \(fresh.data[i]) = \(want), got \(result.data[i])",
                         sourceLocation: sourceLocation)
            return
        }
    }
}

func chunk(_ m: Tensor<Double>, _ c: Int, of k: Int) -> Tensor<Double> {
    let N = m.shape[0], W = m.lastDim / k
    var out = [Double]()
    for n in 0..<N {
        let lo: Int = (n * k + c) * W
        out += m.data[lo..<(lo + W)]
    }
    return Tensor(shape: [N, W], data: out)
}

@Suite("Fast kernels against the reference's layers")
struct FastKernelTests {
    let ws = Workspace()
    var k: Kernels { Kernels(prec: .fp32, ws: ws) }

    @Test(arguments: [(2, 5, 7, 3), (3, 17, 64, 96), (1, 1, 1, 1), (2, 33, 130, 5)])
    func linear(_ N: Int, _ L: Int, _ I: Int, _ O: Int) {
        let shape = [N, L, I, O]
        let (x, xd) = f32(ws, "x", [N, L, I], seed: 1), (w, wd) = f32(ws, "w", [O, I], seed: 2, std: 0.3)
        let (b, bd) = f32(ws, "b", [O], seed: 3)
        let y = ws.get("y", [N, L, O])
        k.linear(x, w, b, y)
        let ref = Linear.forward(xd, weight: wd, bias: bd)
        let mag = Linear.forward(absolute(xd), weight: absolute(wd), bias: absolute(bd))
        expectWithin("linear \(shape) y", double(y), ref, bound: mag.data.map { Double(I + 2) * u32 * $0 })

        // backward from non-zero gradients: dx += dy W, dW += dy^T x, db += sum dy
        let (dy, dyd) = f32(ws, "dy", [N, L, O], seed: 4)
        let (dx, dx0) = f32(ws, "dx", [N, L, I], seed: 5), (dw, dw0) = f32(ws, "dw", [O, I], seed: 6), (db, db0) = f32(ws, "db", [O], seed: 7)
        k.linearBackward(dy, x, w, dx: dx, dw: dw, db: db)
        var rdx = Tensor<Double>.zeros(like: xd), rdw = Tensor<Double>.zeros(like: wd)
        var rdb: Tensor<Double>? = Tensor<Double>.zeros(like: bd)
        Linear.backwardInput(dy: dyd, weight: wd, dx: &rdx)
        Linear.backwardParams(dy: dyd, x: xd, dw: &rdw, db: &rdb)
        var mdx = Tensor<Double>.zeros(like: xd), mdw = Tensor<Double>.zeros(like: wd)
        var mdb: Tensor<Double>? = Tensor<Double>.zeros(like: bd)
        Linear.backwardInput(dy: absolute(dyd), weight: absolute(wd), dx: &mdx)
        Linear.backwardParams(dy: absolute(dyd), x: absolute(xd), dw: &mdw, db: &mdb)
        let R = N * L
        expectAddsF32("linear \(shape) dx", start: dx0, fresh: rdx, result: double(dx), slack: mdx.data.map { Double(O + 2) * u32 * $0 })
        expectAddsF32("linear \(shape) dW", start: dw0, fresh: rdw, result: double(dw), slack: mdw.data.map { Double(R + 2) * u32 * $0 })
        expectAddsF32("linear \(shape) db", start: db0, fresh: rdb!, result: double(db), slack: mdb!.data.map { Double(R + 2) * u32 * $0 })
    }

    /// LayerNorm (eps 1e-6) + modulate, fused. Mean and variance are float32 sums of W terms:
    /// relative error about W u in each, so y is held to 4 (W + 4) u (|xhat| |1 + scale| + |shift|).
    @Test(arguments: [(2, 3, 8), (3, 17, 96)])
    func layerNormModulate(_ N: Int, _ L: Int, _ W: Int) {
        let shape = [N, L, W]
        let (x, xd) = f32(ws, "ln.x", [N, L, W], seed: 11, std: 2), (mod, modd) = f32(ws, "ln.mod", [N, 6 * W], seed: 12, std: 0.5)
        let y = ws.get("ln.y", [N, L, W]), mean = ws.get("ln.mean", [N * L]), rstd = ws.get("ln.rstd", [N * L])
        k.lnModulate(x, mod, shiftChunk: 3, scaleChunk: 4, chunks: 6, y, mean: mean, rstd: rstd)
        let (xhat, saved) = LayerNorm.forward(xd)
        let shift = chunk(modd, 3, of: 6), scale = chunk(modd, 4, of: 6)
        let ref = Modulate.forward(xhat, shift: shift, scale: scale)
        let bound = (0..<ref.count).map { j -> Double in
            let n = j / (L * W), i = j % W
            return 4 * Double(W + 4) * u32 * (abs(xhat.data[j]) * abs(1 + scale.data[n * W + i]) + abs(shift.data[n * W + i]) + 1)
        }
        expectWithin("lnModulate \(shape) y", double(y), ref, bound: bound)

        // backward: dx += ..., dshift += sum dy, dscale += sum dy xhat (into non-zero values)
        let (dy, dyd) = f32(ws, "ln.dy", [N, L, W], seed: 13)
        let (dx, dx0) = f32(ws, "ln.dx", [N, L, W], seed: 14), (dmod, dmod0) = f32(ws, "ln.dmod", [N, 6 * W], seed: 15)
        k.lnModulateBackward(dy, x, mod, shiftChunk: 3, scaleChunk: 4, chunks: 6, mean: mean, rstd: rstd, dx: dx, dmod: dmod)
        var dh = Tensor<Double>.zeros(like: xd), dshift = Tensor<Double>.zeros(like: shift), dscale = dshift
        Modulate.backward(dy: dyd, h: xhat, scale: scale, dh: &dh, dshift: &dshift, dscale: &dscale)
        var rdx = Tensor<Double>.zeros(like: xd)
        LayerNorm.backward(dy: dh, x: xd, saved: saved, dx: &rdx)
        // dx = rstd (g - mean g - xhat mean(g xhat)): sums of W terms of size |g| (1 + |xhat|)
        let dxSlack = (0..<xd.count).map { j -> Double in
            let r = j / W
            var s = 0.0
            for i in 0..<W { s += abs(dh.data[r * W + i]) * (1 + abs(xhat.data[r * W + i])) }
            return 8 * Double(W + 4) * u32 * saved.rstd[r] * (abs(dh.data[j]) + s / Double(W) * (1 + abs(xhat.data[j])))
        }
        expectAddsF32("lnModulate \(shape) dx", start: dx0, fresh: rdx, result: double(dx), slack: dxSlack)
        let dmodRef = (0..<(N * 6 * W)).map { j -> Double in
            let n = j / (6 * W), c = (j % (6 * W)) / W, i = j % W
            return c == 3 ? dshift.data[n * W + i] : c == 4 ? dscale.data[n * W + i] : 0
        }
        let dmodSlack = (0..<(N * 6 * W)).map { j -> Double in
            let n = j / (6 * W), i = j % W
            var s = 0.0
            for l in 0..<L { let r = (n * L + l) * W + i; s += abs(dyd.data[r]) * (1 + abs(xhat.data[r])) }
            return 4 * Double(W + L + 4) * u32 * s
        }
        expectAddsF32("lnModulate \(shape) dmod", start: dmod0, fresh: Tensor(shape: [N, 6 * W], data: dmodRef), result: double(dmod), slack: dmodSlack)
    }

    /// y = x + gate h: one product and one sum per element (2 u); dgate sums L products.
    @Test func gatedResidual() {
        let N = 2, L = 5, W = 12
        let (x, xd) = f32(ws, "g.x", [N, L, W], seed: 21), (h, hd) = f32(ws, "g.h", [N, L, W], seed: 22)
        let (mod, modd) = f32(ws, "g.mod", [N, 6 * W], seed: 23)
        let y = ws.get("g.y", [N, L, W])
        k.gatedResidual(x, mod, chunk: 2, chunks: 6, h, y)
        let gate = chunk(modd, 2, of: 6)
        let ref = GatedResidual.forward(xd, gate: gate, hd)
        expectWithin("gatedResidual y", double(y), ref, bound: (0..<ref.count).map { j in
            2 * u32 * (abs(xd.data[j]) + abs(gate.data[(j / (L * W)) * W + j % W] * hd.data[j])) })

        // backward: dh = gate dy (overwritten), dgate += sum_l dy h
        let (dy, dyd) = f32(ws, "g.dy", [N, L, W], seed: 24)
        let dh = ws.get("g.dh", [N, L, W]), (dmod, dmod0) = f32(ws, "g.dmod", [N, 6 * W], seed: 25)
        k.gatedResidualBackward(dy, mod, chunk: 2, chunks: 6, h, dh: dh, dmod: dmod)
        var rdx = Tensor<Double>.zeros(like: xd), rdgate = Tensor<Double>.zeros(like: gate), rdh = Tensor<Double>.zeros(like: hd)
        GatedResidual.backward(dy: dyd, gate: gate, h: hd, dx: &rdx, dgate: &rdgate, dh: &rdh)
        expectWithin("gatedResidual dh", double(dh), rdh, bound: rdh.data.map { u32 * abs($0) })
        let dmodRef = (0..<(N * 6 * W)).map { j in (j % (6 * W)) / W == 2 ? rdgate.data[(j / (6 * W)) * W + j % W] : 0 }
        let dmodSlack = (0..<(N * 6 * W)).map { j -> Double in
            let n = j / (6 * W), i = j % W
            return Double(L + 2) * u32 * (0..<L).reduce(0) { $0 + abs(dyd.data[(n * L + $1) * W + i] * hd.data[(n * L + $1) * W + i]) }
        }
        expectAddsF32("gatedResidual dgate", start: dmod0, fresh: Tensor(shape: [N, 6 * W], data: dmodRef), result: double(dmod), slack: dmodSlack)
    }

    /// Element-wise activations: vexp / verf are within 2 ulp (FastMathTests), so each output
    /// is held to 16 u of the size of its terms. The backward overwrites dx (SiLU: or adds).
    @Test func activations() {
        let n = 4096
        let (x, xd) = f32(ws, "a.x", [n], seed: 31, std: 3), (dy, dyd) = f32(ws, "a.dy", [n], seed: 32)
        let y = ws.get("a.y", [n]), dx = ws.get("a.dx", [n])
        let sizes = xd.data.map { abs($0) + 1 }
        let cases: [(String, (FT, FT) -> Void, (FT, FT, FT) -> Void, (Tensor<Double>) -> Tensor<Double>,
                     (Tensor<Double>, Tensor<Double>, inout Tensor<Double>) -> Void)] = [
            ("GELU tanh", k.geluTanh, k.geluTanhBackward, { GELUTanh.forward($0) }, { GELUTanh.backward(dy: $0, x: $1, dx: &$2) }),
            ("GELU erf", k.geluErf, k.geluErfBackward, { GELUErf.forward($0) }, { GELUErf.backward(dy: $0, x: $1, dx: &$2) }),
            ("SiLU", k.silu, { k.siluBackward($0, $1, $2, accumulate: false) }, { SiLU.forward($0) }, { SiLU.backward(dy: $0, x: $1, dx: &$2) }),
        ]
        for (name, fwd, bwd, rfwd, rbwd) in cases {
            fwd(x, y)
            expectWithin("\(name) y", double(y), rfwd(xd), bound: sizes.map { 16 * u32 * $0 })
            dx.zero()
            bwd(dy, x, dx)
            var rdx = Tensor<Double>.zeros(like: xd)
            rbwd(dyd, xd, &rdx)
            expectWithin("\(name) dx", double(dx), rdx, bound: (0..<n).map { 16 * u32 * abs(dyd.data[$0]) * (2 + abs(xd.data[$0])) })
        }
        // SiLU's accumulating backward adds into non-zero values
        let (acc, acc0) = f32(ws, "a.acc", [n], seed: 33)
        k.siluBackward(dy, x, acc, accumulate: true)
        var rdx = Tensor<Double>.zeros(like: xd)
        SiLU.backward(dy: dyd, x: xd, dx: &rdx)
        expectAddsF32("SiLU dx (accumulate)", start: acc0, fresh: rdx, result: double(acc), slack: (0..<n).map { 16 * u32 * abs(dyd.data[$0]) * (2 + abs(xd.data[$0])) })
    }

    /// Attention: logits q k^T / sqrt(hd) are sums of hd products (error e_ij <= (hd + 2) u
    /// sum|q k| / sqrt(hd)); a softmax row moves by at most 2 max_j e_ij relative to each
    /// probability, plus (L + 4) u from its own sums; out = P v adds L products.
    @Test(arguments: [(2, 7, 16, 2), (1, 33, 48, 3)])
    func attention(_ N: Int, _ L: Int, _ W: Int, _ H: Int) {
        let shape = [N, L, W, H]
        let hd = W / H
        let (qkv, qkvd) = f32(ws, "at.qkv", [N, L, 3 * W], seed: 41)
        let probs = ws.get("at.probs", [N, H, L, L]), out = ws.get("at.out", [N, L, W])
        k.attentionLogits(qkv, heads: H, probs)
        k.softmaxRows(probs)
        k.attentionOutput(qkv, heads: H, probs, out)
        let (ref, saved) = Attention.forward(qkvd, heads: H)
        // per (n, h, i): the logits' worst error in that row
        var rowErr = [Double](repeating: 0, count: N * H * L)
        for n in 0..<N { for h in 0..<H { for i in 0..<L {
            var e = 0.0
            for j in 0..<L {
                var s = 0.0
                for d in 0..<hd { s += abs(qkvd.data[(n * L + i) * 3 * W + h * hd + d] * qkvd.data[(n * L + j) * 3 * W + W + h * hd + d]) }
                e = max(e, Double(hd + 2) * u32 * s / Double(hd).squareRoot())
            }
            rowErr[(n * H + h) * L + i] = 2 * e + Double(L + 4) * u32
        } } }
        let pBound = (0..<saved.probs.count).map { j in 2 * rowErr[j / L] * saved.probs[j] + u32 }
        expectWithin("attention \(shape) probs", double(probs), Tensor(shape: [N, H, L, L], data: saved.probs), bound: pBound)
        let oBound = (0..<ref.count).map { j -> Double in
            let n = j / (L * W), i = (j / W) % L, c = j % W, h = c / hd
            var s = 0.0
            for m in 0..<L { s += saved.probs[((n * H + h) * L + i) * L + m] * abs(qkvd.data[(n * L + m) * 3 * W + 2 * W + c]) }
            return (rowErr[(n * H + h) * L + i] * 2 + Double(L + 2) * u32) * s + u32 * abs(ref.data[j])
        }
        expectWithin("attention \(shape) out", double(out), ref, bound: oBound)

        // backward: dqkv is overwritten (each (sample, head) writes its own columns once)
        let (dout, doutd) = f32(ws, "at.dout", [N, L, W], seed: 42, std: 0.1)
        let dqkv = ws.get("at.dqkv", [N, L, 3 * W])
        k.attentionBackward(dout, qkv, heads: H, probs, dqkv: dqkv)
        var rd = Tensor<Double>.zeros(like: qkvd)
        Attention.backward(dy: doutd, qkv: qkvd, heads: H, saved: saved, dqkv: &rd)
        // dv = P^T dO; dP = dO v^T; dS = P (dP - sum_m P dP); dq = dS k / sqrt(hd); dk = dS^T q / sqrt(hd):
        // each entry held to (L + hd + 4) (u + the row's probability error) times the same
        // formulas over absolute values (mag), twice.
        var mag = [Double](repeating: 0, count: qkvd.count)
        let sq = Double(hd).squareRoot()
        func at(_ n: Int, _ t: Int, _ part: Int, _ h: Int, _ d: Int) -> Int { (n * L + t) * 3 * W + part * W + h * hd + d }
        for n in 0..<N { for h in 0..<H {
            func P(_ i: Int, _ j: Int) -> Double { saved.probs[((n * H + h) * L + i) * L + j] }
            func dO(_ i: Int, _ d: Int) -> Double { abs(doutd.data[(n * L + i) * W + h * hd + d]) }
            var magP = [Double](repeating: 0, count: L * L), magS = magP
            for i in 0..<L { for j in 0..<L { for d in 0..<hd { magP[i * L + j] += dO(i, d) * abs(qkvd.data[at(n, j, 2, h, d)]) } } }
            for i in 0..<L {
                let row = (0..<L).reduce(0.0) { $0 + P(i, $1) * magP[i * L + $1] }
                for j in 0..<L { magS[i * L + j] = P(i, j) * (magP[i * L + j] + row) }
            }
            for t in 0..<L { for d in 0..<hd {
                var mq = 0.0, mk = 0.0, mv = 0.0
                for m in 0..<L {
                    mq += magS[t * L + m] * abs(qkvd.data[at(n, m, 1, h, d)]) / sq
                    mk += magS[m * L + t] * abs(qkvd.data[at(n, m, 0, h, d)]) / sq
                    mv += P(m, t) * dO(m, d)
                }
                mag[at(n, t, 0, h, d)] = mq; mag[at(n, t, 1, h, d)] = mk; mag[at(n, t, 2, h, d)] = mv
            } }
        } }
        let pErr = rowErr.max()!
        let dBound = mag.map { 2 * Double(L + hd + 4) * (u32 + pErr) * $0 }
        expectWithin("attention \(shape) dqkv", double(dqkv), rd, bound: dBound)
    }
}
