import SDDiTCore

// final_layer (SPEC §2.8; DiT's FinalLayer), the SD-DiT decoder's output and the plain DiT's:
//   shift, scale = Linear(SiLU(c)) [N, 2W];  out = Linear(modulate(LN(z), shift, scale)) [N, T, p p C].
// Backward: dnorm = dout W; dz, dmod from the LN-modulate backward; dSiLU(c) += dmod W_adaLN.
final class FastFinalLayer: FastParameterized {
    let branch: String   // "student" or "dit"
    struct Weights {
        let adaLN, linear: LinearParameters
        init(_ T: TensorTable) { adaLN = T.linear("final_layer.adaLN_modulation.1."); linear = T.linear("final_layer.linear.") }
    }
    private var w: Weights?, g: Weights?
    struct Saved { var z: FT, siluC: FT, mod: FT, norm: FT, mean: FT, rstd: FT }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    func bind(_ P: TensorTable, gradients G: TensorTable?) { w = Weights(P); g = G.map { Weights($0) } }

    func forward(_ ctx: FastContext, _ z: FT, _ siluC: FT) throws -> FT {
        guard let w else { preconditionFailure("FastFinalLayer \(branch): used before its parameters were bound") }
        let k = ctx.k, ws = ctx.ws, name = ActivationName.final(branch)
        let N = z.shape[0], Tn = z.shape[1], W = z.last
        let mod = ws.get(name + ".mod", [N, 2 * W])
        k.linear(siluC, w.adaLN, mod)
        let norm = ws.get(ActivationName.finalNorm(branch), [N, Tn, W])
        let mean = ws.get(name + ".mean", [N * Tn]), rstd = ws.get(name + ".rstd", [N * Tn])
        k.lnModulate(z, mod, shiftChunk: 0, scaleChunk: 1, chunks: 2, norm, mean: mean, rstd: rstd, eps: ctx.variant.layerNormEps("final_layer."))
        let o = ws.get(name, [N, Tn, ctx.cfg.patchDim])
        k.linear(norm, w.linear, o)
        try ctx.out(name, "final_layer Linear", o, [("final.norm", norm)])
        saved = Saved(z: z, siluC: siluC, mod: mod, norm: norm, mean: mean, rstd: rstd)
        return o
    }

    /// dz from dout [N, T, p p C]; adds into `dsiluC` and final_layer's parameter gradients.
    func backward(_ ctx: FastContext, dOut: FT, dsiluC: FT) throws -> FT {
        guard let s = saved, let w, let g else { preconditionFailure("FastFinalLayer \(branch): backward without a forward or gradients") }
        let k = ctx.k, ws = ctx.ws, name = ActivationName.final(branch), d = "d." + name
        let N = s.z.shape[0], Tn = s.z.shape[1], W = s.z.last
        let dnorm = ws.get("d." + ActivationName.finalNorm(branch), [N, Tn, W], zero: true)
        k.linearBackward(dOut, s.norm, w.linear, dx: dnorm, g.linear)
        try ctx.gradOut(ActivationName.finalNorm(branch), "final_layer Linear", dnorm,
                      inputs: [(ActivationName.gradient(name) + " (dL/dF, scaled)", dOut)])
        let dmod = ws.get(d + ".mod", [N, 2 * W], zero: true)
        let dz = ws.get(d + ".z", [N, Tn, W], zero: true)
        k.lnModulateBackward(dnorm, s.z, s.mod, shiftChunk: 0, scaleChunk: 1, chunks: 2, mean: s.mean, rstd: s.rstd, dx: dz, dmod: dmod)
        k.linearBackward(dmod, s.siluC, w.adaLN, dx: dsiluC, g.adaLN)
        return dz
    }
}
