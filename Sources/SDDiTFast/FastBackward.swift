import Glibc
import SDDiTCore

// Backward of the fast model: the forward read bottom-up, gradients added into `grads`.
extension FastModel {
    func gradOut(_ name: String, _ op: String, _ t: FT, inputs: [(String, FT)] = []) throws {
        try out("d " + name, op + " (backward)", t, inputs)
    }

    /// Backward of `block`; returns dx; adds into dsiluC and the block's parameter gradients.
    func blockBackward(_ name: String, _ key: String, _ P: [String: FT], x: FT, siluC: FT, dy: FT, dsiluC: FT, heads: Int) throws -> FT {
        let N = x.shape[0], L = x.shape[1], W = x.last, hm = P[key + "mlp.fc1.weight"]!.shape[0]
        let g = grads
        let mod = ws.get(name + ".mod", [N, 6 * W]), m1 = ws.get(name + ".m1", [N, L, W])
        let qkv = ws.get(name + ".qkv", [N, L, 3 * W]), probs = ws.get(name + ".attn.probs", [N, heads, L, L])
        let a = ws.get(name + ".attn.out", [N, L, W]), proj = ws.get(name + ".attn.proj", [N, L, W])
        let x1 = ws.get(name + ".x1", [N, L, W]), m2 = ws.get(name + ".m2", [N, L, W])
        let f1 = ws.get(name + ".mlp.fc1", [N, L, hm]), gl = ws.get(name + ".mlp.gelu", [N, L, hm])
        let f2 = ws.get(name + ".mlp.fc2", [N, L, W])
        let mean1 = ws.get(name + ".mean1", [N * L]), rstd1 = ws.get(name + ".rstd1", [N * L])
        let mean2 = ws.get(name + ".mean2", [N * L]), rstd2 = ws.get(name + ".rstd2", [N * L])
        let dmod = ws.get("d." + name + ".mod", [N, 6 * W], zero: true)
        // MLP branch: y = x1 + gate2 * fc2(gelu(fc1(norm2)))
        let df2 = ws.get("d." + name + ".mlp.fc2", [N, L, W])
        k.gatedResidualBackward(dy, mod, chunk: 5, chunks: 6, f2, dh: df2, dmod: dmod)
        let dx1 = ws.get("d." + name + ".x1", [N, L, W])
        dx1.p.update(from: dy.p, count: dy.count)
        let dg = ws.get("d." + name + ".mlp.gelu", [N, L, hm], zero: true)
        k.linearBackward(df2, gl, P[key + "mlp.fc2.weight"]!, dx: dg, dw: g[key + "mlp.fc2.weight"], db: g[key + "mlp.fc2.bias"])
        let df1 = ws.get("d." + name + ".mlp.fc1", [N, L, hm])
        if variant.exactGELU(key) { k.geluErfBackward(dg, f1, df1) } else { k.geluTanhBackward(dg, f1, df1) }
        try gradOut(name + ".mlp.fc1", "GELU(tanh)", df1)
        let dm2 = ws.get("d." + name + ".m2", [N, L, W], zero: true)
        k.linearBackward(df1, m2, P[key + "mlp.fc1.weight"]!, dx: dm2, dw: g[key + "mlp.fc1.weight"], db: g[key + "mlp.fc1.bias"])
        k.lnModulateBackward(dm2, x1, mod, shiftChunk: 3, scaleChunk: 4, chunks: 6, mean: mean2, rstd: rstd2, dx: dx1, dmod: dmod)
        try gradOut(name + ".x1", "modulate(LayerNorm)", dx1)
        // attention branch: x1 = x + gate1 * proj(attn(qkv(norm1)))
        let dproj = ws.get("d." + name + ".attn.proj", [N, L, W])
        k.gatedResidualBackward(dx1, mod, chunk: 2, chunks: 6, proj, dh: dproj, dmod: dmod)
        let dx = ws.get("d." + name + ".x", [N, L, W])
        dx.p.update(from: dx1.p, count: dx1.count)
        let da = ws.get("d." + name + ".attn.out", [N, L, W], zero: true)
        k.linearBackward(dproj, a, P[key + "attn.proj.weight"]!, dx: da, dw: g[key + "attn.proj.weight"], db: g[key + "attn.proj.bias"])
        let dqkv = ws.get("d." + name + ".qkv", [N, L, 3 * W])
        k.attentionBackward(da, qkv, heads: heads, probs, dqkv: dqkv)
        try gradOut(name + ".attn.qkv", "attention", dqkv)
        let dm1 = ws.get("d." + name + ".m1", [N, L, W], zero: true)
        k.linearBackward(dqkv, m1, P[key + "attn.qkv.weight"]!, dx: dm1, dw: g[key + "attn.qkv.weight"], db: g[key + "attn.qkv.bias"])
        k.lnModulateBackward(dm1, x, mod, shiftChunk: 0, scaleChunk: 1, chunks: 6, mean: mean1, rstd: rstd1, dx: dx, dmod: dmod)
        k.linearBackward(dmod, siluC, P[key + "adaLN_modulation.1.weight"]!, dx: dsiluC,
                         dw: g[key + "adaLN_modulation.1.weight"], db: g[key + "adaLN_modulation.1.bias"])
        try gradOut(name, "DiT block", dx)
        return dx
    }

    /// Head backward over rows: returns dx [R, D].
    func headBackward(_ pre: String, _ P: [String: FT], _ s: HeadState, dOut: FT) throws -> FT {
        let R = s.x.rows, B = cfg.headBottleneckDim, K = cfg.headOutDim, g = grads
        let du = ws.get("d." + pre + ".head.u", [R, B], zero: true)
        let dw = ws.get("d." + pre + ".head.wn", [K, B], zero: true)
        k.linearBackward(dOut, s.u, s.w, dx: du, dw: dw, db: nil)
        try gradOut(pre + ".head.normalized", "weight-normalized last layer", du, inputs: [("d head.out", dOut)])
        // weight norm: dv = g/||v|| (dw - vhat (vhat . dw))
        let v = P["head.last_layer.weight_v"]!, gg = P["head.last_layer.weight_g"]!, dv = g["head.last_layer.weight_v"]!
        for kk in 0..<K {
            let n = s.vnorm.p[kk]
            var dot: Float = 0
            for i in 0..<B { dot += v.p[kk * B + i] / n * dw.p[kk * B + i] }
            for i in 0..<B { dv.p[kk * B + i] += gg.p[kk] / n * (dw.p[kk * B + i] - v.p[kk * B + i] / n * dot) }
        }
        let dh3 = ws.get("d." + pre + ".head.h3", [R, B])
        for r in 0..<R {
            let n = s.norms.p[r]
            if n > 1e-12 {
                var dot: Float = 0
                for i in 0..<B { dot += s.u.p[r * B + i] * du.p[r * B + i] }
                for i in 0..<B { dh3.p[r * B + i] = (du.p[r * B + i] - s.u.p[r * B + i] * dot) / n }
            } else {
                for i in 0..<B { dh3.p[r * B + i] = du.p[r * B + i] / 1e-12 }
            }
        }
        try gradOut(pre + ".head.mlp.4", "F.normalize", dh3)
        let Hh = cfg.headHiddenDim
        let dg2 = ws.get("d." + pre + ".head.g2", [R, Hh], zero: true)
        k.linearBackward(dh3, s.g2, P["head.mlp.4.weight"]!, dx: dg2, dw: g["head.mlp.4.weight"], db: g["head.mlp.4.bias"])
        let dh2 = ws.get("d." + pre + ".head.h2", [R, Hh])
        k.geluErfBackward(dg2, s.h2, dh2)
        let dg1 = ws.get("d." + pre + ".head.g1", [R, Hh], zero: true)
        k.linearBackward(dh2, s.g1, P["head.mlp.2.weight"]!, dx: dg1, dw: g["head.mlp.2.weight"], db: g["head.mlp.2.bias"])
        let dh1 = ws.get("d." + pre + ".head.h1", [R, Hh])
        k.geluErfBackward(dg1, s.h1, dh1)
        let dx = ws.get("d." + pre + ".head.x", [R, cfg.hiddenSize], zero: true)
        k.linearBackward(dh1, s.x, P["head.mlp.0.weight"]!, dx: dx, dw: g["head.mlp.0.weight"], db: g["head.mlp.0.bias"])
        try gradOut(pre + ".head.mlp.0", "head Linear", dx)
        return dx
    }

    /// Decoder backward from dOut [N, T, p p C]; returns dH [N, T, D]; adds into dsiluC.
    func decoderBackward(_ e: EncoderState, _ d: DecoderState, _ P: [String: FT], dOut: FT, dsiluC: FT) throws -> FT {
        let N = e.tokens.shape[0], Tn = cfg.tokens, D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize, g = grads
        let dmF = ws.get("d.student.final.norm", [N, Tn, Dd], zero: true)
        k.linearBackward(dOut, d.mF, P["final_layer.linear.weight"]!, dx: dmF, dw: g["final_layer.linear.weight"], db: g["final_layer.linear.bias"])
        try gradOut("student.final.norm", "final_layer Linear", dmF, inputs: [("d student.final (dL/dF, scaled)", dOut)])
        let dmodF = ws.get("d.student.final.mod", [N, 2 * Dd], zero: true)
        var dz = ws.get("d.student.final.z", [N, Tn, Dd], zero: true)
        k.lnModulateBackward(dmF, d.z[cfg.decoderDepth], d.modF, shiftChunk: 0, scaleChunk: 1, chunks: 2, mean: d.meanF, rstd: d.rstdF, dx: dz, dmod: dmodF)
        k.linearBackward(dmodF, e.siluC, P["final_layer.adaLN_modulation.1.weight"]!, dx: dsiluC,
                         dw: g["final_layer.adaLN_modulation.1.weight"], db: g["final_layer.adaLN_modulation.1.bias"])
        for i in stride(from: cfg.decoderDepth - 1, through: 0, by: -1) {
            dz = try blockBackward(ActivationName.decBlock(i), "decoder_blocks.\(i).", P, x: d.z[i], siluC: e.siluC, dy: dz, dsiluC: dsiluC, heads: cfg.decoderNumHeads)
        }
        let dm0 = ws.get("d.student.dec.layer.norm", [N, Tn, D], zero: true)
        k.linearBackward(dz, d.m0, P["decoder_layer.linear.weight"]!, dx: dm0, dw: g["decoder_layer.linear.weight"], db: g["decoder_layer.linear.bias"])
        let dmod0 = ws.get("d.student.dec.layer.mod", [N, 2 * D], zero: true)
        let dH = ws.get("d.student.dec.in", [N, Tn, D], zero: true)
        k.lnModulateBackward(dm0, d.H, d.mod0, shiftChunk: 0, scaleChunk: 1, chunks: 2, mean: d.mean0, rstd: d.rstd0, dx: dH, dmod: dmod0)
        k.linearBackward(dmod0, e.siluC, P["decoder_layer.adaLN_modulation.1.weight"]!, dx: dsiluC,
                         dw: g["decoder_layer.adaLN_modulation.1.weight"], db: g["decoder_layer.adaLN_modulation.1.bias"])
        try gradOut(ActivationName.decIn, "decoder_layer", dH)
        return dH
    }

    /// Encoder backward: dEnc [N, 1+V, D] (from the head and the decoder), dTokens [N, T, D]
    /// (hidden positions of the decoder input), dsiluC.
    func encoderBackward(_ e: EncoderState, _ P: [String: FT], dEnc: FT, dTokens: FT, dsiluC: FT) throws {
        let N = e.tokens.shape[0], Tn = cfg.tokens, D = cfg.hiddenSize, V = e.keep[0].count, g = grads
        var dx = dEnc
        for i in stride(from: cfg.depth - 1, through: 0, by: -1) {
            dx = try blockBackward("student.enc.block.\(i)", "blocks.\(i).", P, x: e.h[i], siluC: e.siluC, dy: dx, dsiluC: dsiluC, heads: cfg.numHeads)
        }
        let dcls = g["cls_token"]!
        for n in 0..<N {
            for i in 0..<D { dcls.p[i] += dx.p[n * (1 + V) * D + i] }
            for (v, t) in e.keep[n].enumerated() {
                for i in 0..<D { dTokens.p[(n * Tn + t) * D + i] += dx.p[(n * (1 + V) + 1 + v) * D + i] }
            }
        }
        try gradOut(ActivationName.tokens, "patch embed", dTokens)
        let dwx = FT(p: g["x_embedder.proj.weight"]!.p, shape: [D, cfg.patchDim])
        patchKernels.linearBackward(dTokens, e.patches, FT(p: P["x_embedder.proj.weight"]!.p, shape: [D, cfg.patchDim]), dx: nil, dw: dwx, db: g["x_embedder.proj.bias"])
        // conditioning: siluC = SiLU(c); c = mlp.2(SiLU(mlp.0(temb))) + table[y]
        let dc = ws.get("d.student.c", [N, D])
        k.siluBackward(dsiluC, e.c, dc, accumulate: false)
        try gradOut(ActivationName.c, "SiLU", dc)
        let table = g["y_embedder.embedding_table.weight"]!
        for n in 0..<N { for i in 0..<D { table.p[labelsForBackward[n] * D + i] += dc.p[n * D + i] } }
        let dt1s = ws.get("d.student.t1s", [N, D], zero: true)
        k.linearBackward(dc, e.t1s, P["t_embedder.mlp.2.weight"]!, dx: dt1s, dw: g["t_embedder.mlp.2.weight"], db: g["t_embedder.mlp.2.bias"])
        let dt1 = ws.get("d.student.t1", [N, D])
        k.siluBackward(dt1s, e.t1, dt1, accumulate: false)
        k.linearBackward(dt1, e.temb, P["t_embedder.mlp.0.weight"]!, dx: nil, dw: g["t_embedder.mlp.0.weight"], db: g["t_embedder.mlp.0.bias"])
    }
}
