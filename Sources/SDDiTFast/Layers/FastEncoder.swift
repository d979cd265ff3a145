import SDDiTCore

// The SD-DiT encoder (SPEC §2.1-2.6; the reference's Encoder), student or teacher branch:
// tokens = patch embed(x_in) [N, T, D]; SiLU(c) from the conditioning;
// h0 = [cls_token + pos_embed[0]; tokens at the visible positions] [N, 1+V, D]; the depth
// adaLN-Zero blocks -> out [N, 1+V, D].
// Backward: the blocks, then dcls_token = sum over samples of dh0[CLS], dtokens += dh0 at the
// visible positions, the patch embedding and the conditioning.
final class FastEncoder: FastParameterized {
    let branch: String
    let patchEmbed: FastPatchEmbed
    let conditioning: FastConditioning
    let blocks: [FastDiTBlock]
    private var cls: FT?, dcls: FT?, pos: FT?
    struct Saved { var tokens: FT, siluC: FT, keep: [[Int]], out: FT }
    private var saved: Saved?

    init(branch: String, _ cfg: ModelConfig) {
        self.branch = branch
        patchEmbed = FastPatchEmbed(branch: branch); conditioning = FastConditioning(branch: branch)
        blocks = (0..<cfg.depth).map { FastDiTBlock(name: ActivationName.encBlock(branch, $0), key: "blocks.\($0).", heads: cfg.numHeads) }
    }

    func bind(_ P: TensorTable, gradients G: TensorTable?) {
        cls = P.tensor("cls_token"); pos = P.tensor("pos_embed"); dcls = G?.tensor("cls_token")
        patchEmbed.bind(P, gradients: G); conditioning.bind(P, gradients: G)
        for b in blocks { b.bind(P, gradients: G) }
    }

    private var s: Saved {
        guard let s = saved else { preconditionFailure("FastEncoder \(branch): output read before a forward") }
        return s
    }
    /// The last forward's patch tokens [N, T, D], SiLU(c) [N, D], visible positions and output [N, 1+V, D].
    var tokens: FT { s.tokens }
    var siluC: FT { s.siluC }
    var keep: [[Int]] { s.keep }
    var out: FT { s.out }

    /// Encoder on x_in = c_in x (float32 [N, C, H, W]).
    func forward(_ ctx: FastContext, xIn: FT, cNoise: [Double], labels: [Int], keep: [[Int]]) throws -> FT {
        guard let cls, let pos else { preconditionFailure("FastEncoder \(branch): used before its parameters were bound") }
        let cfg = ctx.cfg, N = labels.count, D = cfg.hiddenSize, Tn = cfg.tokens, V = keep[0].count
        let tokens = try patchEmbed.forward(ctx, xIn: xIn)
        let siluC = try conditioning.forward(ctx, cNoise: cNoise, labels: labels)
        let h0 = ctx.ws.get(branch + ".enc.in", [N, 1 + V, D])
        for n in 0..<N {
            for i in 0..<D { h0.p[n * (1 + V) * D + i] = cls.p[i] + pos.p[i] }
            for (v, t) in keep[n].enumerated() {
                (h0.p + (n * (1 + V) + 1 + v) * D).update(from: tokens.p + (n * Tn + t) * D, count: D)
            }
        }
        var hs = [h0]
        // the streamed step's teacher keeps each block's output only (it has no backward)
        let transient = ctx.streamed && branch == ActivationName.teacher
        for b in blocks {
            hs.append(try b.forward(ctx, hs[hs.count - 1], siluC))
            if transient { b.release(ctx) }
        }
        if branch == ActivationName.student { ctx.remember(ActivationName.tokens, tokens); ctx.remember(ActivationName.c, conditioning.c) }
        for (b, h) in zip(blocks, hs.dropFirst()) { ctx.remember(b.name, h) }
        saved = Saved(tokens: tokens, siluC: siluC, keep: keep, out: hs[cfg.depth])
        return hs[cfg.depth]
    }

    /// From dout [N, 1+V, D] and dtokens [N, T, D] (the decoder's hidden positions; added
    /// into); adds into `dsiluC` and then runs the conditioning's backward with it.
    func backward(_ ctx: FastContext, dOut: FT, dTokens: FT, dsiluC: FT) throws {
        guard let dcls else { preconditionFailure("FastEncoder \(branch): backward without gradients") }
        let s = self.s, N = s.tokens.shape[0], Tn = s.tokens.shape[1], D = s.tokens.last, V = s.keep[0].count
        var dx = dOut
        for b in blocks.reversed() {
            dx = try b.backward(ctx, dy: dx, dsiluC: dsiluC)
            if ctx.streamed { b.release(ctx) }   // the streamed step: done with this block
        }
        for n in 0..<N {
            for i in 0..<D { dcls.p[i] += dx.p[n * (1 + V) * D + i] }
            for (v, t) in s.keep[n].enumerated() {
                for i in 0..<D { dTokens.p[(n * Tn + t) * D + i] += dx.p[(n * (1 + V) + 1 + v) * D + i] }
            }
        }
        try ctx.gradOut(ActivationName.tokens(branch), "patch embed", dTokens)
        patchEmbed.backward(ctx, dTokens: dTokens)
        try conditioning.backward(ctx, dsiluC: dsiluC)
    }
}
