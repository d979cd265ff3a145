import SDDiTCore

// Patch embedding (SPEC §2.1-2.2; the reference's Patchify + x_embedder + pos_embed):
//   patches = patchify(x_in) [N, T, C p p] in (c, i, j) order,
//   tokens = patches W_x^T + b_x + pos_embed[t] [N, T, D]   (pos_embed's CLS row skipped when present).
// Backward: dW_x += dtokens^T patches, db_x += sum dtokens (pos_embed is fixed; no gradient to x_in).
// TF32 operands under `FastVariant.tf32PatchEmbedding` (FastModel.patchKernels).
final class FastPatchEmbed {
    let branch: String
    struct Saved { var patches: FT, tokens: FT }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    func forward(_ m: FastModel, _ P: [String: FT], xIn: FT) throws -> FT {
        let cfg = m.cfg, ws = m.ws
        let N = xIn.shape[0], D = cfg.hiddenSize, Tn = cfg.tokens, Pd = cfg.patchDim
        let patches = ws.get(branch + ".patches", [N, Tn, Pd])
        let pp = patches.p, xp = xIn.p
        PatchLayout.patchify(N: N, C: cfg.inChannels, H: cfg.inputSize, W: cfg.inputSize, p: cfg.patchSize) { image, token in
            pp[token] = xp[image]
        }
        let tokens = ws.get(branch + ".tokens", [N, Tn, D])
        m.patchKernels.linear(patches, P["x_embedder.proj.weight"]!.reshaped([D, Pd]), P["x_embedder.proj.bias"]!, tokens)
        let pos = P["pos_embed"]!, first = pos.count - Tn * D   // D with a CLS row, else 0
        for n in 0..<N { for i in 0..<(Tn * D) { tokens.p[n * Tn * D + i] += pos.p[first + i] } }
        try m.out(ActivationName.tokens(branch), "patch embed + pos_embed", tokens, [("x_in", xIn)])
        saved = Saved(patches: patches, tokens: tokens)
        return tokens
    }

    /// Adds the gradients of x_embedder's weight and bias from dtokens [N, T, D].
    func backward(_ m: FastModel, _ P: [String: FT], _ G: [String: FT], dTokens: FT) {
        guard let s = saved else { fatalError("FastPatchEmbed \(branch): backward without a forward") }
        let D = m.cfg.hiddenSize, Pd = m.cfg.patchDim
        m.patchKernels.linearBackward(dTokens, s.patches, P["x_embedder.proj.weight"]!.reshaped([D, Pd]), dx: nil,
                                      dw: G["x_embedder.proj.weight"]!.reshaped([D, Pd]), db: G["x_embedder.proj.bias"])
    }
}
