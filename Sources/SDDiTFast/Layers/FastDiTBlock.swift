import SDDiTCore

// adaLN-Zero DiT block (SPEC §2.6; the reference's DiTBlock), encoder and decoder alike.
// x [N, L, W], SiLU(c) [N, D]:
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))            (mod [N, 6W])
//   x1 = x  + gate1 * proj(Attn(qkv(modulate(LN(x),  shift1, scale1))))
//   y  = x1 + gate2 * fc2(GELU_tanh(fc1(modulate(LN(x1), shift2, scale2))))
// Buffers live in the model's workspace under the block's activation name.
final class FastDiTBlock {
    let name: String    // activation name, e.g. "student.enc.block.0"
    let key: String     // parameter prefix, "blocks.i." or "decoder_blocks.i."
    let heads: Int
    /// The forward's buffers the backward reads (and the profile times kernels on).
    struct Saved {
        var x: FT, siluC: FT, mod: FT
        var m1: FT, mean1: FT, rstd1: FT, qkv: FT, probs: FT, a: FT, proj: FT, x1: FT
        var m2: FT, mean2: FT, rstd2: FT, f1: FT, gl: FT, f2: FT
    }
    private(set) var saved: Saved?

    init(name: String, key: String, heads: Int) { self.name = name; self.key = key; self.heads = heads }

    /// The streamed step (`FastModel.streamedTeacher`) once this block is done (the
    /// teacher's after its forward, the student's after its backward): its forward and
    /// backward buffers go, only its output y (the next block's input) stays in the workspace.
    func release(_ m: FastModel) {
        saved = nil
        m.ws.release { $0.hasPrefix(name + ".") || $0.hasPrefix("d." + name + ".") }
    }

    func forward(_ m: FastModel, _ P: [String: FT], _ x: FT, _ siluC: FT) throws -> FT {
        let k = m.k, ws = m.ws, B = ActivationName.Block.self
        let N = x.shape[0], L = x.shape[1], W = x.last, hm = P[key + "mlp.fc1.weight"]!.shape[0]
        let mod = ws.get(name + ".mod", [N, 6 * W])
        k.linear(siluC, P[key + "adaLN_modulation.1.weight"]!, P[key + "adaLN_modulation.1.bias"]!, mod)
        try m.out(B.adaLN(name), "adaLN_modulation Linear(SiLU(c))", mod, [("SiLU(c)", siluC)])
        let eps = m.variant.layerNormEps(key)
        let m1 = ws.get(name + ".m1", [N, L, W]), mean1 = ws.get(name + ".mean1", [N * L]), rstd1 = ws.get(name + ".rstd1", [N * L])
        let swap = m.variant.swapsShiftScale(key)   // a planted bug: (shift, scale) chunks swapped
        k.lnModulate(x, mod, shiftChunk: swap ? 1 : 0, scaleChunk: swap ? 0 : 1, chunks: 6, m1, mean: mean1, rstd: rstd1, eps: eps)
        try m.out(B.norm1(name), "modulate(LayerNorm(x), shift1, scale1)", m1, [("x", x)])
        let qkv = ws.get(name + ".qkv", [N, L, 3 * W])
        k.linear(m1, P[key + "attn.qkv.weight"]!, P[key + "attn.qkv.bias"]!, qkv)
        try m.out(B.qkv(name), "attn.qkv Linear", qkv, [("norm1", m1)])
        let probs = ws.get(name + ".attn.probs", [N, heads, L, L])
        k.attentionLogits(qkv, heads: heads, probs, unscaled: m.variant.unscaledAttention(key))
        try m.out(B.logits(name), "q k^T / sqrt(d) (matmul)", probs, [("q,k", qkv)])
        k.softmaxRows(probs)
        try m.out(B.probs(name), "softmax (float32)", probs, [])
        let a = ws.get(name + ".attn.out", [N, L, W])
        k.attentionOutput(qkv, heads: heads, probs, a)
        try m.out(B.attnOut(name), "P v (matmul)", a, [("v", qkv)])
        let proj = ws.get(name + ".attn.proj", [N, L, W])
        k.linear(a, P[key + "attn.proj.weight"]!, P[key + "attn.proj.bias"]!, proj)
        try m.out(B.proj(name), "attn.proj Linear", proj, [("attn.out", a)])
        let x1 = ws.get(name + ".x1", [N, L, W])
        k.gatedResidual(x, mod, chunk: 2, chunks: 6, proj, x1)
        try m.out(B.x1(name), "x + gate1 * attn", x1, [("x", x), ("attn.proj", proj)])
        let m2 = ws.get(name + ".m2", [N, L, W]), mean2 = ws.get(name + ".mean2", [N * L]), rstd2 = ws.get(name + ".rstd2", [N * L])
        k.lnModulate(x1, mod, shiftChunk: swap ? 4 : 3, scaleChunk: swap ? 3 : 4, chunks: 6, m2, mean: mean2, rstd: rstd2, eps: eps)
        try m.out(B.norm2(name), "modulate(LayerNorm(x1), shift2, scale2)", m2, [("x1", x1)])
        let f1 = ws.get(name + ".mlp.fc1", [N, L, hm]), gl = ws.get(name + ".mlp.gelu", [N, L, hm])
        k.linear(m2, P[key + "mlp.fc1.weight"]!, P[key + "mlp.fc1.bias"]!, f1)
        try m.out(B.fc1(name), "mlp.fc1 Linear", f1, [("norm2", m2)])
        if m.variant.exactGELU(key) { k.geluErf(f1, gl) } else { k.geluTanh(f1, gl) }
        try m.out(B.gelu(name), "GELU(tanh)", gl, [("mlp.fc1", f1)])
        let f2 = ws.get(name + ".mlp.fc2", [N, L, W])
        k.linear(gl, P[key + "mlp.fc2.weight"]!, P[key + "mlp.fc2.bias"]!, f2)
        try m.out(B.fc2(name), "mlp.fc2 Linear", f2, [("mlp.gelu", gl)])
        let y = ws.get(name, [N, L, W])
        k.gatedResidual(x1, mod, chunk: 5, chunks: 6, f2, y)
        try m.out(name, "x1 + gate2 * mlp", y, [("x1", x1), ("mlp.fc2", f2)])
        saved = Saved(x: x, siluC: siluC, mod: mod, m1: m1, mean1: mean1, rstd1: rstd1, qkv: qkv, probs: probs, a: a, proj: proj,
                      x1: x1, m2: m2, mean2: mean2, rstd2: rstd2, f1: f1, gl: gl, f2: f2)
        return y
    }

    /// dx from dy, read bottom-up: dx1 = dy + LN-modulate backward of the MLP branch
    /// (dfc2 = gate2 dy), dx = dx1 + the same for the attention branch (dproj = gate1 dx1);
    /// dmod collects the six chunks' gradients, dSiLU(c) += dmod W_adaLN. Adds into `dsiluC`
    /// and the block's parameter gradients `G`.
    func backward(_ m: FastModel, _ P: [String: FT], _ G: [String: FT], dy: FT, dsiluC: FT) throws -> FT {
        guard let s = saved else { fatalError("FastDiTBlock \(name): backward without a forward") }
        let k = m.k, ws = m.ws, B = ActivationName.Block.self, d = "d." + name
        let N = s.x.shape[0], L = s.x.shape[1], W = s.x.last, hm = s.f1.last
        let dmod = ws.get(d + ".mod", [N, 6 * W], zero: true)
        // MLP branch: y = x1 + gate2 * fc2(gelu(fc1(norm2)))
        let df2 = ws.get(d + ".mlp.fc2", [N, L, W])
        k.gatedResidualBackward(dy, s.mod, chunk: 5, chunks: 6, s.f2, dh: df2, dmod: dmod)
        let dx1 = ws.get(d + ".x1", [N, L, W])
        dx1.p.update(from: dy.p, count: dy.count)
        let dg = ws.get(d + ".mlp.gelu", [N, L, hm], zero: true)
        k.linearBackward(df2, s.gl, P[key + "mlp.fc2.weight"]!, dx: dg, dw: G[key + "mlp.fc2.weight"], db: G[key + "mlp.fc2.bias"])
        let df1 = ws.get(d + ".mlp.fc1", [N, L, hm])
        if m.variant.exactGELU(key) { k.geluErfBackward(dg, s.f1, df1) } else { k.geluTanhBackward(dg, s.f1, df1) }
        try m.gradOut(B.fc1(name), "GELU(tanh)", df1)
        let dm2 = ws.get(d + ".m2", [N, L, W], zero: true)
        k.linearBackward(df1, s.m2, P[key + "mlp.fc1.weight"]!, dx: dm2, dw: G[key + "mlp.fc1.weight"], db: G[key + "mlp.fc1.bias"])
        let swap = m.variant.swapsShiftScale(key)
        k.lnModulateBackward(dm2, s.x1, s.mod, shiftChunk: swap ? 4 : 3, scaleChunk: swap ? 3 : 4, chunks: 6, mean: s.mean2, rstd: s.rstd2, dx: dx1, dmod: dmod)
        try m.gradOut(B.x1(name), "modulate(LayerNorm)", dx1)
        // attention branch: x1 = x + gate1 * proj(attn(qkv(norm1)))
        let dproj = ws.get(d + ".attn.proj", [N, L, W])
        k.gatedResidualBackward(dx1, s.mod, chunk: 2, chunks: 6, s.proj, dh: dproj, dmod: dmod)
        let dx = ws.get(d + ".x", [N, L, W])
        dx.p.update(from: dx1.p, count: dx1.count)
        let da = ws.get(d + ".attn.out", [N, L, W], zero: true)
        k.linearBackward(dproj, s.a, P[key + "attn.proj.weight"]!, dx: da, dw: G[key + "attn.proj.weight"], db: G[key + "attn.proj.bias"])
        let dqkv = ws.get(d + ".qkv", [N, L, 3 * W])
        k.attentionBackward(da, s.qkv, heads: heads, s.probs, dqkv: dqkv, unscaled: m.variant.unscaledAttention(key))
        try m.gradOut(B.qkv(name), "attention", dqkv)
        let dm1 = ws.get(d + ".m1", [N, L, W], zero: true)
        k.linearBackward(dqkv, s.m1, P[key + "attn.qkv.weight"]!, dx: dm1, dw: G[key + "attn.qkv.weight"], db: G[key + "attn.qkv.bias"])
        k.lnModulateBackward(dm1, s.x, s.mod, shiftChunk: swap ? 1 : 0, scaleChunk: swap ? 0 : 1, chunks: 6, mean: s.mean1, rstd: s.rstd1, dx: dx, dmod: dmod)
        k.linearBackward(dmod, s.siluC, P[key + "adaLN_modulation.1.weight"]!, dx: dsiluC,
                         dw: G[key + "adaLN_modulation.1.weight"], db: G[key + "adaLN_modulation.1.bias"])
        try m.gradOut(name, "DiT block", dx)
        return dx
    }
}
