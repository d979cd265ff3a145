import SDDiTCore

// adaLN-Zero DiT block (SPEC §2.6; the reference's DiTBlock), encoder and decoder alike.
// x [N, L, W], SiLU(c) [N, D]:
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))            (mod [N, 6W])
//   x1 = x  + gate1 * proj(Attn(qkv(modulate(LN(x),  shift1, scale1))))
//   y  = x1 + gate2 * fc2(GELU_tanh(fc1(modulate(LN(x1), shift2, scale2))))
// Backward, bottom-up: dx1 = dy + the LN-modulate backward of the MLP branch (dfc2 = gate2 dy),
// dx = dx1 + the same for the attention branch (dproj = gate1 dx1); dmod collects the six
// chunks' gradients, dSiLU(c) += dmod W_adaLN.
// The forward and the backward are each a list of kernel steps (`forwardSteps`,
// `backwardSteps`): the block runs them in order, `oracle bench --profile` times each one.
final class FastDiTBlock: FastParameterized {
    let name: String    // activation name, e.g. "student.enc.block.0"
    let key: String     // parameter prefix, "blocks.i." or "decoder_blocks.i."
    let heads: Int
    struct Weights {
        let adaLN, qkv, proj, fc1, fc2: LinearParameters
        init(_ T: TensorTable, _ key: String) {
            adaLN = T.linear(key + "adaLN_modulation.1."); qkv = T.linear(key + "attn.qkv."); proj = T.linear(key + "attn.proj.")
            fc1 = T.linear(key + "mlp.fc1."); fc2 = T.linear(key + "mlp.fc2.")
        }
    }
    private var w: Weights?, g: Weights?
    /// The forward's buffers the backward reads.
    struct Saved {
        var x: FT, siluC: FT, mod: FT
        var m1: FT, mean1: FT, rstd1: FT, qkv: FT, probs: FT, a: FT, proj: FT, x1: FT
        var m2: FT, mean2: FT, rstd2: FT, f1: FT, gl: FT, f2: FT
    }
    private var saved: Saved?

    /// One kernel of the block with the check of its output.
    struct Step {
        let name: String
        let run: () throws -> Void
    }

    init(name: String, key: String, heads: Int) { self.name = name; self.key = key; self.heads = heads }

    func bind(_ P: TensorTable, gradients G: TensorTable?) { w = Weights(P, key); g = G.map { Weights($0, key) } }

    private var weights: Weights {
        guard let w else { preconditionFailure("FastDiTBlock \(name): used before its parameters were bound") }
        return w
    }

    /// The streamed step (`FastContext.streamed`) once this block is done (the teacher's after
    /// its forward, the student's after its backward): its forward and backward buffers go,
    /// only its output y (the next block's input) stays in the workspace.
    func release(_ c: FastContext) {
        saved = nil
        c.ws.release { $0.hasPrefix(self.name + ".") || $0.hasPrefix("d." + self.name + ".") }
    }

    /// A Linear's step: y = x W^T + b, checked as `out` (its input named `input`).
    private func linearStep(_ c: FastContext, _ title: String, _ x: FT, _ p: LinearParameters, _ y: FT,
                            out: String, _ what: String, input: String) -> Step {
        Step(name: title) {
            c.k.linear(x, p, y)
            try c.out(out, what, y, [(input, x)])
        }
    }

    /// A gated residual's step: y = x + gate h, the gate chunk `gate` of mod's six.
    private func residualStep(_ c: FastContext, _ title: String, _ x: FT, _ mod: FT, gate: Int, _ h: FT, _ y: FT,
                              out: String, _ what: String, inputs: (String, String)) -> Step {
        Step(name: title) {
            c.k.gatedResidual(x, mod, chunk: gate, chunks: 6, h, y)
            try c.out(out, what, y, [(inputs.0, x), (inputs.1, h)])
        }
    }

    func forward(_ c: FastContext, _ x: FT, _ siluC: FT) throws -> FT {
        let (steps, y) = forwardSteps(c, x, siluC)
        for s in steps { try s.run() }
        return y
    }

    /// The forward's kernels in order, over buffers allocated here; running them all leaves
    /// y (returned) and the buffers the backward reads.
    func forwardSteps(_ c: FastContext, _ x: FT, _ siluC: FT) -> (steps: [Step], y: FT) {
        let k = c.k, ws = c.ws, B = ActivationName.Block.self, name = self.name, heads = self.heads, w = weights
        let N = x.shape[0], L = x.shape[1], W = x.last, hm = w.fc1.weight.shape[0]
        let eps1 = c.variant.layerNormEps(key, norm: 1), eps2 = c.variant.layerNormEps(key, norm: 2), unscaled = c.variant.unscaledAttention(key), exact = c.variant.exactGELU(key)
        let swap = c.variant.swapsShiftScale(key)   // a planted bug: (shift, scale) chunks swapped
        let mod = ws.get(name + ".mod", [N, 6 * W])
        let m1 = ws.get(name + ".m1", [N, L, W]), mean1 = ws.get(name + ".mean1", [N * L]), rstd1 = ws.get(name + ".rstd1", [N * L])
        let qkv = ws.get(name + ".qkv", [N, L, 3 * W]), probs = ws.get(name + ".attn.probs", [N, heads, L, L])
        let a = ws.get(name + ".attn.out", [N, L, W]), proj = ws.get(name + ".attn.proj", [N, L, W]), x1 = ws.get(name + ".x1", [N, L, W])
        let m2 = ws.get(name + ".m2", [N, L, W]), mean2 = ws.get(name + ".mean2", [N * L]), rstd2 = ws.get(name + ".rstd2", [N * L])
        let f1 = ws.get(name + ".mlp.fc1", [N, L, hm]), gl = ws.get(name + ".mlp.gelu", [N, L, hm]), f2 = ws.get(name + ".mlp.fc2", [N, L, W])
        let y = ws.get(name, [N, L, W])
        saved = Saved(x: x, siluC: siluC, mod: mod, m1: m1, mean1: mean1, rstd1: rstd1, qkv: qkv, probs: probs, a: a, proj: proj,
                      x1: x1, m2: m2, mean2: mean2, rstd2: rstd2, f1: f1, gl: gl, f2: f2)
        let steps = [
            linearStep(c, "fwd adaLN Linear", siluC, w.adaLN, mod, out: B.adaLN(name), "adaLN_modulation Linear(SiLU(c))", input: "SiLU(c)"),
            Step(name: "fwd norm1 LN + modulate") {
                k.lnModulate(x, mod, shiftChunk: swap ? 1 : 0, scaleChunk: swap ? 0 : 1, chunks: 6, m1, mean: mean1, rstd: rstd1, eps: eps1)
                try c.out(B.norm1(name), "modulate(LayerNorm(x), shift1, scale1)", m1, [("x", x)])
            },
            linearStep(c, "fwd qkv Linear", m1, w.qkv, qkv, out: B.qkv(name), "attn.qkv Linear", input: "norm1"),
            Step(name: "fwd attention q k^T (sgemm per sample, head)") {
                k.attentionLogits(qkv, heads: heads, probs, unscaled: unscaled)
                try c.out(B.logits(name), "q k^T / sqrt(d) (matmul)", probs, [("q,k", qkv)])
            },
            Step(name: "fwd softmax") {
                k.softmaxRows(probs)
                try c.out(B.probs(name), "softmax (float32)", probs, [])
            },
            Step(name: "fwd attention P v (sgemm per sample, head)") {
                k.attentionOutput(qkv, heads: heads, probs, a)
                try c.out(B.attnOut(name), "P v (matmul)", a, [("v", qkv)])
            },
            linearStep(c, "fwd proj Linear", a, w.proj, proj, out: B.proj(name), "attn.proj Linear", input: "attn.out"),
            residualStep(c, "fwd gated residual (attn branch)", x, mod, gate: 2, proj, x1, out: B.x1(name), "x + gate1 * attn", inputs: ("x", "attn.proj")),
            Step(name: "fwd norm2 LN + modulate") {
                k.lnModulate(x1, mod, shiftChunk: swap ? 4 : 3, scaleChunk: swap ? 3 : 4, chunks: 6, m2, mean: mean2, rstd: rstd2, eps: eps2)
                try c.out(B.norm2(name), "modulate(LayerNorm(x1), shift2, scale2)", m2, [("x1", x1)])
            },
            linearStep(c, "fwd fc1 Linear", m2, w.fc1, f1, out: B.fc1(name), "mlp.fc1 Linear", input: "norm2"),
            Step(name: exact ? "fwd GELU erf" : "fwd GELU tanh") {
                if exact { k.geluErf(f1, gl) } else { k.geluTanh(f1, gl) }
                try c.out(B.gelu(name), "GELU(tanh)", gl, [("mlp.fc1", f1)])
            },
            linearStep(c, "fwd fc2 Linear", gl, w.fc2, f2, out: B.fc2(name), "mlp.fc2 Linear", input: "mlp.gelu"),
            residualStep(c, "fwd gated residual (MLP branch)", x1, mod, gate: 5, f2, y, out: name, "x1 + gate2 * mlp", inputs: ("x1", "mlp.fc2")),
        ]
        return (steps, y)
    }

    /// dx from dy; adds into `dsiluC` and the block's parameter gradients.
    func backward(_ c: FastContext, dy: FT, dsiluC: FT) throws -> FT {
        let (steps, dx) = backwardSteps(c, dy: dy, dsiluC: dsiluC)
        for s in steps { try s.run() }
        return dx
    }

    /// The backward's kernels in order (after a forward); running them all leaves dx (returned).
    func backwardSteps(_ c: FastContext, dy: FT, dsiluC: FT) -> (steps: [Step], dx: FT) {
        guard let s = saved else { preconditionFailure("FastDiTBlock \(name): backward without a forward") }
        guard let g else { preconditionFailure("FastDiTBlock \(name): backward without gradients to add into") }
        let k = c.k, ws = c.ws, B = ActivationName.Block.self, d = "d." + name, name = self.name, heads = self.heads, w = weights
        let N = s.x.shape[0], L = s.x.shape[1], W = s.x.last, hm = s.f1.last
        let unscaled = c.variant.unscaledAttention(key), exact = c.variant.exactGELU(key), swap = c.variant.swapsShiftScale(key)
        // buffers that accumulate are zeroed in the step that first adds into them (while the
        // step's other operands are in cache), not all here
        let dmod = ws.get(d + ".mod", [N, 6 * W])
        let df2 = ws.get(d + ".mlp.fc2", [N, L, W]), dx1 = ws.get(d + ".x1", [N, L, W])
        let dg = ws.get(d + ".mlp.gelu", [N, L, hm]), df1 = ws.get(d + ".mlp.fc1", [N, L, hm])
        let dm2 = ws.get(d + ".m2", [N, L, W])
        let dproj = ws.get(d + ".attn.proj", [N, L, W]), dx = ws.get(d + ".x", [N, L, W])
        let da = ws.get(d + ".attn.out", [N, L, W]), dqkv = ws.get(d + ".qkv", [N, L, 3 * W])
        let dm1 = ws.get(d + ".m1", [N, L, W])
        let steps = [
            // MLP branch: y = x1 + gate2 * fc2(gelu(fc1(norm2)))
            Step(name: "bwd gated residual (MLP branch)") {
                dmod.zero()
                k.gatedResidualBackward(dy, s.mod, chunk: 5, chunks: 6, s.f2, dh: df2, dmod: dmod)
                dx1.p.update(from: dy.p, count: dy.count)
            },
            Step(name: "bwd fc2 Linear") { dg.zero(); k.linearBackward(df2, s.gl, w.fc2, dx: dg, g.fc2) },
            Step(name: exact ? "bwd GELU erf" : "bwd GELU tanh") {
                if exact { k.geluErfBackward(dg, s.f1, df1) } else { k.geluTanhBackward(dg, s.f1, df1) }
                try c.gradOut(B.fc1(name), "GELU(tanh)", df1)
            },
            Step(name: "bwd fc1 Linear") { dm2.zero(); k.linearBackward(df1, s.m2, w.fc1, dx: dm2, g.fc1) },
            Step(name: "bwd norm2 LN + modulate") {
                k.lnModulateBackward(dm2, s.x1, s.mod, shiftChunk: swap ? 4 : 3, scaleChunk: swap ? 3 : 4, chunks: 6,
                                     mean: s.mean2, rstd: s.rstd2, dx: dx1, dmod: dmod)
                try c.gradOut(B.x1(name), "modulate(LayerNorm)", dx1)
            },
            // attention branch: x1 = x + gate1 * proj(attn(qkv(norm1)))
            Step(name: "bwd gated residual (attn branch)") {
                k.gatedResidualBackward(dx1, s.mod, chunk: 2, chunks: 6, s.proj, dh: dproj, dmod: dmod)
                dx.p.update(from: dx1.p, count: dx1.count)
            },
            Step(name: "bwd proj Linear") { da.zero(); k.linearBackward(dproj, s.a, w.proj, dx: da, g.proj) },
            Step(name: "bwd attention (4 sgemm per sample, head + softmax bwd)") {
                k.attentionBackward(da, s.qkv, heads: heads, s.probs, dqkv: dqkv, unscaled: unscaled)
                try c.gradOut(B.qkv(name), "attention", dqkv)
            },
            Step(name: "bwd qkv Linear") { dm1.zero(); k.linearBackward(dqkv, s.m1, w.qkv, dx: dm1, g.qkv) },
            Step(name: "bwd norm1 LN + modulate") {
                k.lnModulateBackward(dm1, s.x, s.mod, shiftChunk: swap ? 1 : 0, scaleChunk: swap ? 0 : 1, chunks: 6,
                                     mean: s.mean1, rstd: s.rstd1, dx: dx, dmod: dmod)
            },
            Step(name: "bwd adaLN Linear") {
                k.linearBackward(dmod, s.siluC, w.adaLN, dx: dsiluC, g.adaLN)
                try c.gradOut(name, "DiT block", dx)
            },
        ]
        return (steps, dx)
    }
}
