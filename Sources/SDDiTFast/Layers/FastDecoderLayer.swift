import SDDiTCore

// Decoder input and decoder_layer (SPEC §2.7-2.8; the reference's Decoder, first half):
//   H [N, T, D]: position t holds the encoder output of visible token t, else tokens[t];
//   shift, scale = Linear(SiLU(c)) [N, 2D];  z = Linear(modulate(LN(H), shift, scale)) + decoder_pos_embed [N, T, Dd].
// Backward: dH from the LN-modulate backward, dSiLU(c) += dmod W_adaLN; then the gather's
// transpose: visible positions of dH add into the encoder output's gradient, hidden ones
// go to the tokens.
final class FastDecoderLayer: FastParameterized {
    struct Weights {
        let adaLN, linear: LinearParameters
        init(_ T: TensorTable) { adaLN = T.linear("decoder_layer.adaLN_modulation.1."); linear = T.linear("decoder_layer.linear.") }
    }
    private var w: Weights?, g: Weights?, pos: FT?
    struct Saved { var H: FT, siluC: FT, keep: [[Int]], mod: FT, norm: FT, mean: FT, rstd: FT }
    private var saved: Saved?

    func bind(_ P: TensorTable, gradients G: TensorTable?) { w = Weights(P); g = G.map { Weights($0) }; pos = P.tensor("decoder_pos_embed") }

    /// `encOut` [N, 1+V, D] (CLS first), `tokens` [N, T, D], `keep` the visible positions.
    func forward(_ ctx: FastContext, tokens: FT, encOut: FT, keep: [[Int]], _ siluC: FT) throws -> FT {
        guard let w, let dpos = pos else { preconditionFailure("FastDecoderLayer: used before its parameters were bound") }
        let k = ctx.k, ws = ctx.ws, cfg = ctx.cfg, name = ActivationName.decLayer
        let N = tokens.shape[0], Tn = cfg.tokens, D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize, V = keep[0].count
        let H = ws.get(ActivationName.decIn, [N, Tn, D])
        if ctx.variant.maskToken {   // a divergence: MaskDiT's mask token (zeros, or the fitted values)
            if let mt = ctx.variant.maskTokenValues, mt.count == D {
                for r in 0..<(N * Tn) { (H.p + r * D).update(from: mt, count: D) }
            } else { H.zero() }
        } else { H.p.update(from: tokens.p, count: N * Tn * D) }
        for n in 0..<N { for (v, t) in keep[n].enumerated() {
            (H.p + (n * Tn + t) * D).update(from: encOut.p + (n * (1 + V) + 1 + v) * D, count: D)
        } }
        ctx.remember(ActivationName.decIn, H)
        let mod = ws.get(name + ".mod", [N, 2 * D])
        k.linear(siluC, w.adaLN, mod)
        let norm = ws.get(name + ".norm", [N, Tn, D]), mean = ws.get(name + ".mean", [N * Tn]), rstd = ws.get(name + ".rstd", [N * Tn])
        k.lnModulate(H, mod, shiftChunk: 0, scaleChunk: 1, chunks: 2, norm, mean: mean, rstd: rstd, eps: ctx.variant.layerNormEps("decoder_layer."))
        let z = ws.get(name, [N, Tn, Dd])
        k.linear(norm, w.linear, z)
        for n in 0..<N { for i in 0..<(Tn * Dd) { z.p[n * Tn * Dd + i] += dpos.p[i] } }
        try ctx.out(name, "decoder_layer Linear + decoder_pos_embed", z, [(ActivationName.decIn, H)])
        saved = Saved(H: H, siluC: siluC, keep: keep, mod: mod, norm: norm, mean: mean, rstd: rstd)
        return z
    }

    /// From dz [N, T, Dd] and `dEncHead` [N, 1+V, D] (the head's gradient of the encoder
    /// output): the encoder output's full gradient and dtokens [N, T, D]; adds into `dsiluC`.
    func backward(_ ctx: FastContext, dz: FT, dEncHead: FT, dsiluC: FT) throws -> (dEnc: FT, dTokens: FT) {
        guard let s = saved, let w, let g else { preconditionFailure("FastDecoderLayer: backward without a forward or gradients") }
        let k = ctx.k, ws = ctx.ws, d = "d." + ActivationName.decLayer
        let N = s.H.shape[0], Tn = s.H.shape[1], D = s.H.last, V = s.keep[0].count
        let dnorm = ws.get(d + ".norm", [N, Tn, D], zero: true)
        k.linearBackward(dz, s.norm, w.linear, dx: dnorm, g.linear)
        let dmod = ws.get(d + ".mod", [N, 2 * D], zero: true)
        let dH = ws.get("d." + ActivationName.decIn, [N, Tn, D], zero: true)
        k.lnModulateBackward(dnorm, s.H, s.mod, shiftChunk: 0, scaleChunk: 1, chunks: 2, mean: s.mean, rstd: s.rstd, dx: dH, dmod: dmod)
        k.linearBackward(dmod, s.siluC, w.adaLN, dx: dsiluC, g.adaLN)
        try ctx.gradOut(ActivationName.decIn, "decoder_layer", dH)
        // the gather's transpose: visible positions to the encoder output, hidden ones to the tokens
        let dEnc = ws.get("d.student.enc.out", [N, 1 + V, D])
        dEnc.p.update(from: dEncHead.p, count: dEncHead.count)
        let dTokens = ws.get("d." + ActivationName.tokens, [N, Tn, D])
        if ctx.variant.maskToken { dTokens.zero() } else { dTokens.p.update(from: dH.p, count: dH.count) }
        for n in 0..<N { for (v, t) in s.keep[n].enumerated() { for i in 0..<D {
            dEnc.p[(n * (1 + V) + 1 + v) * D + i] += dH.p[(n * Tn + t) * D + i]
            dTokens.p[(n * Tn + t) * D + i] = 0
        } } }
        return (dEnc, dTokens)
    }
}
