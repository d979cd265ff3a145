import Testing
import TestSupport
import SDDiTReference

// Finite-difference checks (5-point central differences) of every layer kind's backward, on all inputs and parameters:
// f(inputs) = sum(forward(inputs) * g) for a seeded random upstream gradient g.

/// Checks every entry of every named input of one layer, and the backward's contract: it adds
/// into the gradients it is given (`start`: zeros for the check, then seeded non-zero values).
func checkLayer(_ name: String, _ inputs: [(String, Tensor<Double>)],
                forward: ([Tensor<Double>]) -> Tensor<Double>,
                backward: ([Tensor<Double>], Tensor<Double>, [Tensor<Double>]) -> [Tensor<Double>],
                sourceLocation: SourceLocation = #_sourceLocation) {
    let xs = inputs.map(\.1)
    let y = forward(xs)
    let g = randomTensor(y.shape, seed: 991)
    let grads = backward(xs, g, xs.map { Tensor<Double>.zeros(like: $0) })
    for (j, (label, x)) in inputs.enumerated() {
        let c = checkGradient("\(name) d/d\(label)", shape: x.shape, x: x.data, analytic: grads[j].data) { v in
            var ys = xs
            ys[j] = Tensor(shape: x.shape, data: v)
            return dot(forward(ys), g)
        }
        expectPasses(c, sourceLocation: sourceLocation)
    }
    let start = xs.enumerated().map { randomTensor($0.element.shape, seed: 500 + UInt64($0.offset)) }
    let added = backward(xs, g, start)
    for (j, (label, _)) in inputs.enumerated() {
        expectAdds("\(name) d/d\(label)", start: start[j], fresh: grads[j], result: added[j], sourceLocation: sourceLocation)
    }
}

/// A backward adds into its output: result = start + fresh, up to the rounding of a different
/// summation order (a few ulps of |start| + |fresh|; an overwrite or a doubled term is off by
/// about |start| or |fresh|, ~1 here).
func expectAdds(_ name: String, start: Tensor<Double>, fresh: Tensor<Double>, result: Tensor<Double>,
                sourceLocation: SourceLocation = #_sourceLocation) {
    for i in 0..<start.count {
        let want = start.data[i] + fresh.data[i], err = abs(result.data[i] - want)
        if !(err <= 1e-13 * (abs(start.data[i]) + abs(fresh.data[i]) + 1)) {
            Issue.record("\(name) does not add into its gradient at \(unravel(i, start.shape)): start \(start.data[i]) + fresh \(fresh.data[i]) = \(want), got \(result.data[i])",
                         sourceLocation: sourceLocation)
            return
        }
    }
}

@Suite("Layer gradients (5-point central differences, h = 1e-3)")
struct LayerGradientTests {
    /// The checker itself cannot pass a NaN (|NaN| > tol is false, so it is tested as
    /// "not within"), nor a wrong derivative.
    @Test func checkerCatchesPlantedDefects() {
        let x = [0.3, -1.2, 2.0]
        func f(_ y: [Double]) -> Double { y.reduce(0) { $0 + $1 * $1 } }   // gradient 2 x
        #expect(checkGradient("ok", shape: [3], x: x, analytic: x.map { 2 * $0 }, f: f).failures == 0, "the checker fails a correct gradient")
        #expect(checkGradient("nan analytic", shape: [3], x: x, analytic: [0.6, .nan, 4.0], f: f).failures == 1, "the checker does not fail exactly the NaN entry of the analytic gradient")
        #expect(checkGradient("nan numeric", shape: [3], x: x, analytic: x.map { 2 * $0 }, f: { _ in .nan }).failures == 3, "the checker does not fail every entry of a NaN numeric derivative")
        #expect(checkGradient("wrong", shape: [3], x: x, analytic: [0.6, -2.4, 4.0 + 1e-6], f: f).failures == 1, "the checker does not fail exactly the entry off by 1e-6")
        // its report keeps a NaN as the worst error (max would drop it)
        let nan = checkGradient("nan analytic", shape: [3], x: x, analytic: [0.6, .nan, 4.0], f: f)
        #expect(nan.worstAbs.isNaN && nan.worstRel.isNaN && nan.worstIndex == [1],
                "a NaN entry is not the reported worst: abs \(nan.worstAbs), rel \(nan.worstRel) at \(nan.worstIndex)")
    }

    /// The worst-error folds keep NaN, where Swift's max drops it ([1, nan, 2].max() is 2), so a
    /// `worst <= tol` check on a NaN result fails.
    @Test func foldsKeepNaN() {
        #expect([1, .nan, 2].max() == 2, "Swift's max no longer drops NaN: the helpers' reason is gone")
        #expect(maxOrNaN([1, .nan, 2]).isNaN && maxOrNaN([.nan, 1]).isNaN, "maxOrNaN drops a NaN")
        #expect(maxOrNaN([1, 3, 2]) == 3 && maxOrNaN([], empty: -1) == -1, "maxOrNaN's maximum or its empty value is wrong")
        #expect(maxAbsOrNaN([-4, 1]) == 4 && maxAbsOrNaN([1, -.nan]).isNaN, "maxAbsOrNaN is wrong or drops a NaN")
        #expect(maxAbsDiffOrNaN([1, 2], [1, 2.5]) == 0.5 && maxAbsDiffOrNaN([1, .infinity], [1, .infinity]).isNaN,
                "maxAbsDiffOrNaN is wrong or drops the NaN of inf - inf")
        #expect(maxAbsDiffOrNaN([1, 2], [1, 2, 3]).isNaN, "maxAbsDiffOrNaN compares arrays of different lengths")
    }

    @Test func linear() {
        checkLayer("Linear", [("x", randomTensor([2, 3, 5], seed: 1)), ("weight", randomTensor([4, 5], seed: 2)),
                              ("bias", randomTensor([4], seed: 3))],
                   forward: { Linear.forward($0[0], weight: $0[1], bias: $0[2]) },
                   backward: { xs, dy, start in
                       var dx = start[0], dw = start[1]
                       var db: Tensor<Double>? = start[2]
                       Linear.backwardInput(dy: dy, weight: xs[1], dx: &dx)
                       Linear.backwardParams(dy: dy, x: xs[0], dw: &dw, db: &db)
                       return [dx, dw, db!]
                   })
    }

    @Test func layerNorm() {
        checkLayer("LayerNorm", [("x", randomTensor([3, 4, 6], seed: 4, std: 2))],
                   forward: { LayerNorm.forward($0[0]).y },
                   backward: { xs, dy, start in
                       var dx = start[0]
                       LayerNorm.backward(dy: dy, x: xs[0], saved: LayerNorm.forward(xs[0]).saved, dx: &dx)
                       return [dx]
                   })
    }

    @Test func modulate() {
        checkLayer("Modulate", [("h", randomTensor([2, 3, 4], seed: 5)), ("shift", randomTensor([2, 4], seed: 6)),
                                ("scale", randomTensor([2, 4], seed: 7))],
                   forward: { Modulate.forward($0[0], shift: $0[1], scale: $0[2]) },
                   backward: { xs, dy, start in
                       var dh = start[0], ds = start[1], dk = start[2]
                       Modulate.backward(dy: dy, h: xs[0], scale: xs[2], dh: &dh, dshift: &ds, dscale: &dk)
                       return [dh, ds, dk]
                   })
    }

    @Test func gatedResidual() {
        checkLayer("GatedResidual", [("x", randomTensor([2, 3, 4], seed: 8)), ("gate", randomTensor([2, 4], seed: 9)),
                                     ("h", randomTensor([2, 3, 4], seed: 10))],
                   forward: { GatedResidual.forward($0[0], gate: $0[1], $0[2]) },
                   backward: { xs, dy, start in
                       var dx = start[0], dg = start[1]
                       var dh = start[2]
                       GatedResidual.backward(dy: dy, gate: xs[1], h: xs[2], dx: &dx, dgate: &dg, dh: &dh)
                       return [dx, dg, dh]
                   })
    }

    @Test func elementwise() {
        let x = randomTensor([3, 7], seed: 11, std: 2)
        checkLayer("SiLU", [("x", x)], forward: { SiLU.forward($0[0]) }, backward: { xs, dy, start in
            var dx = start[0]; SiLU.backward(dy: dy, x: xs[0], dx: &dx); return [dx]
        })
        checkLayer("GELUTanh", [("x", x)], forward: { GELUTanh.forward($0[0]) }, backward: { xs, dy, start in
            var dx = start[0]; GELUTanh.backward(dy: dy, x: xs[0], dx: &dx); return [dx]
        })
        checkLayer("GELUErf", [("x", x)], forward: { GELUErf.forward($0[0]) }, backward: { xs, dy, start in
            var dx = start[0]; GELUErf.backward(dy: dy, x: xs[0], dx: &dx); return [dx]
        })
    }

    @Test func attention() {
        for heads in [1, 2] {
            checkLayer("Attention(heads \(heads))", [("qkv", randomTensor([2, 5, 3 * 8], seed: 12))],
                       forward: { Attention.forward($0[0], heads: heads).y },
                       backward: { xs, dy, start in
                           var d = start[0]
                           Attention.backward(dy: dy, qkv: xs[0], heads: heads,
                                              saved: Attention.forward(xs[0], heads: heads).saved, dqkv: &d)
                           return [d]
                       })
        }
    }

    @Test func labelEmbedding() {
        let labels = [2, 0, 2, 3]
        checkLayer("LabelEmbedding", [("table", randomTensor([4, 5], seed: 13))],
                   forward: { LabelEmbedding.forward(labels, table: $0[0]) },
                   backward: { xs, dy, start in
                       var d = start[0]
                       LabelEmbedding.backward(dy: dy, labels: labels, dtable: &d); return [d]
                   })
    }

    @Test func unpatchify() {
        checkLayer("Unpatchify", [("x", randomTensor([2, 9, 2 * 2 * 3], seed: 14))],
                   forward: { Unpatchify.forward($0[0], channels: 3, p: 2) },
                   backward: { xs, dy, start in
                       var d = start[0]; Unpatchify.backward(dy: dy, p: 2, dx: &d); return [d]
                   })
    }

    @Test func tokenGatherScatter() {
        let keep = [[0, 2, 3], [1, 2, 4]]
        checkLayer("TokenGather", [("x", randomTensor([2, 5, 3], seed: 15))],
                   forward: { TokenGather.forward($0[0], keep: keep) },
                   backward: { xs, dy, start in
                       var d = start[0]; TokenGather.backward(dy: dy, keep: keep, dx: &d); return [d]
                   })
        checkLayer("TokenScatter", [("base", randomTensor([2, 5, 3], seed: 16)), ("enc", randomTensor([2, 3, 3], seed: 17))],
                   forward: { TokenScatter.forward(base: $0[0], $0[1], keep: keep) },
                   backward: { xs, dy, start in
                       var db = start[0], de = start[1]
                       TokenScatter.backward(dy: dy, keep: keep, dbase: &db, denc: &de); return [db, de]
                   })
    }

    @Test func l2Normalize() {
        checkLayer("L2Normalize", [("x", randomTensor([3, 6], seed: 18))],
                   forward: { L2Normalize.forward($0[0]).y },
                   backward: { xs, dy, start in
                       let (y, n) = L2Normalize.forward(xs[0])
                       var d = start[0]; L2Normalize.backward(dy: dy, y: y, norms: n, dx: &d); return [d]
                   })
    }

    @Test func weightNormLinear() {
        let g = Tensor(shape: [4, 1], data: [1, 0.5, 2, 1.5])
        checkLayer("WeightNormLinear", [("x", randomTensor([2, 3, 5], seed: 19)), ("weight_v", randomTensor([4, 5], seed: 20))],
                   forward: { WeightNormLinear.forward($0[0], v: $0[1], g: g) },
                   backward: { xs, dy, start in
                       var dx = start[0], dv = start[1]
                       WeightNormLinear.backward(dy: dy, x: xs[0], v: xs[1], g: g, dx: &dx, dv: &dv); return [dx, dv]
                   })
    }

    @Test func dinoCrossEntropy() {
        let t = randomTensor([3, 7], seed: 21), c = randomTensor([7], seed: 22, std: 0.1)
        let q = DINOCrossEntropy.teacherProbs(t, center: c, tauT: 0.09)
        checkLayer("DINOCrossEntropy", [("s", randomTensor([3, 7], seed: 23))],
                   forward: { Tensor(shape: [], data: [DINOCrossEntropy.forward(student: $0[0], teacherProbs: q, tauS: 0.1)]) },
                   backward: { xs, dy, start in
                       var d = start[0]
                       DINOCrossEntropy.backward(dL: dy[0], student: xs[0], teacherProbs: q, tauS: 0.1, ds: &d); return [d]
                   })
    }

    @Test func edmLoss() {
        let x0 = randomTensor([2, 3, 2, 2], seed: 24), sigma = [0.3, 2.5]
        checkLayer("EDMLoss", [("D", randomTensor([2, 3, 2, 2], seed: 25))],
                   forward: { Tensor(shape: [], data: [EDMLoss.forward(D: $0[0], x0: x0, sigma: sigma, sigmaData: 0.5)]) },
                   backward: { xs, dy, start in
                       var d = start[0]
                       EDMLoss.backward(dL: dy[0], D: xs[0], x0: x0, sigma: sigma, sigmaData: 0.5, dD: &d); return [d]
                   })
    }

    @Test func ditBlock() {
        // One adaLN-Zero block with random (non-zero) parameters: d/dx, d/dSiLU(c), d/dparams.
        let W = 8, D = 6, heads = 2, prefix = "blocks.0."
        var P = Parameters<Double>()
        let shapes: [(String, [Int])] = [("attn.qkv.weight", [3 * W, W]), ("attn.qkv.bias", [3 * W]),
                                         ("attn.proj.weight", [W, W]), ("attn.proj.bias", [W]),
                                         ("mlp.fc1.weight", [4 * W, W]), ("mlp.fc1.bias", [4 * W]),
                                         ("mlp.fc2.weight", [W, 4 * W]), ("mlp.fc2.bias", [W]),
                                         ("adaLN_modulation.1.weight", [6 * W, D]), ("adaLN_modulation.1.bias", [6 * W])]
        for (i, (k, s)) in shapes.enumerated() { P[prefix + k] = randomTensor(s, seed: 100 + UInt64(i), std: 0.3) }
        let block = DiTBlock(prefix: prefix, heads: heads)
        let x = randomTensor([2, 4, W], seed: 30), sc = randomTensor([2, D], seed: 31)
        let g = randomTensor([2, 4, W], seed: 32)
        let (_, cache) = block.forward(x, siluC: sc, P)
        let grads = Gradients<Double>(shapes.map { ParameterSpec(key: prefix + $0.0, shape: $0.1, part: .encoder, frozen: false) })
        var dsc = Tensor<Double>.zeros(like: sc)
        let dx = block.backward(dy: g, cache, siluC: sc, P, grads: grads, dsiluC: &dsc)
        expectPasses(checkGradient("DiTBlock d/dx", shape: x.shape, x: x.data, analytic: dx.data) {
            dot(block.forward(Tensor(shape: x.shape, data: $0), siluC: sc, P).0, g) })
        expectPasses(checkGradient("DiTBlock d/dSiLU(c)", shape: sc.shape, x: sc.data, analytic: dsc.data) {
            dot(block.forward(x, siluC: Tensor(shape: sc.shape, data: $0), P).0, g) })
        for (k, s) in shapes {
            let key = prefix + k
            expectPasses(checkGradient("DiTBlock d/d\(key)", shape: s, x: P[key].data, analytic: grads[key].value.data) { v in
                var Q = P; Q[key] = Tensor(shape: s, data: v)
                return dot(block.forward(x, siluC: sc, Q).0, g)
            })
        }
        // The block adds into d SiLU(c) (every block of the model shares it) and into the
        // parameter gradients: a second backward from non-zero values adds the same again.
        let fresh = Dictionary(uniqueKeysWithValues: shapes.map { (prefix + $0.0, grads[prefix + $0.0].value) })
        let s0 = randomTensor(sc.shape, seed: 33)
        var dsc2 = s0
        _ = block.backward(dy: g, cache, siluC: sc, P, grads: grads, dsiluC: &dsc2)
        expectAdds("DiTBlock d/dSiLU(c)", start: s0, fresh: dsc, result: dsc2)
        for (key, f) in fresh { expectAdds("DiTBlock d/d\(key)", start: f, fresh: f, result: grads[key].value) }
    }
}
