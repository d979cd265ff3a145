import SDDiTCore

// Patch embedding (SPEC §2.1-2.2; the reference's Patchify + x_embedder + pos_embed):
//   patches = patchify(x_in) [N, T, C p p] in (c, i, j) order,
//   tokens = patches W_x^T + b_x + pos_embed[t] [N, T, D]   (pos_embed's CLS row skipped when present).
// Backward: dW_x += dtokens^T patches, db_x += sum dtokens (pos_embed is fixed; no gradient to x_in).
// TF32 operands under `FastVariant.tf32PatchEmbedding` (FastContext.patchKernels).
final class FastPatchEmbed: FastParameterized {
    let branch: String
    /// x_embedder's conv as a Linear ([D, C p p]); g has no pos_embed (fixed).
    private var proj: LinearParameters?, dproj: LinearParameters?, pos: FT?
    struct Saved { var patches: FT, tokens: FT }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    func bind(_ P: TensorTable, gradients G: TensorTable?) {
        func conv(_ T: TensorTable) -> LinearParameters {
            let w = T.tensor("x_embedder.proj.weight")
            return LinearParameters(weight: w.reshaped([w.shape[0], w.count / w.shape[0]]), bias: T.tensor("x_embedder.proj.bias"))
        }
        proj = conv(P); dproj = G.map(conv); pos = P.tensor("pos_embed")
    }

    func forward(_ ctx: FastContext, xIn: FT) throws -> FT {
        guard let proj, let pos else { preconditionFailure("FastPatchEmbed \(branch): used before its parameters were bound") }
        let cfg = ctx.cfg, ws = ctx.ws
        let N = xIn.shape[0], D = cfg.hiddenSize, Tn = cfg.tokens, Pd = cfg.patchDim
        let patches = ws.get(branch + ".patches", [N, Tn, Pd])
        let pp = patches.p, xp = xIn.p
        PatchLayout.patchify(N: N, C: cfg.inChannels, H: cfg.inputSize, W: cfg.inputSize, p: cfg.patchSize) { image, token in
            pp[token] = xp[image]
        }
        let tokens = ws.get(branch + ".tokens", [N, Tn, D])
        ctx.patchKernels.linear(patches, proj, tokens)
        let first = pos.count - Tn * D   // D with a CLS row, else 0
        for n in 0..<N { for i in 0..<(Tn * D) { tokens.p[n * Tn * D + i] += pos.p[first + i] } }
        try ctx.out(ActivationName.tokens(branch), "patch embed + pos_embed", tokens, [("x_in", xIn)])
        saved = Saved(patches: patches, tokens: tokens)
        return tokens
    }

    /// Adds the gradients of x_embedder's weight and bias from dtokens [N, T, D].
    func backward(_ ctx: FastContext, dTokens: FT) {
        guard let s = saved, let proj, let dproj else { preconditionFailure("FastPatchEmbed \(branch): backward without a forward or gradients") }
        ctx.patchKernels.linearBackward(dTokens, s.patches, proj, dx: nil, dproj)
    }
}
