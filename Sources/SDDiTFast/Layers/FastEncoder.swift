import SDDiTCore

// The SD-DiT encoder (SPEC §2.1-2.6; the reference's Encoder), student or teacher branch:
// tokens = patch embed(x_in) [N, T, D]; SiLU(c) from the conditioning;
// h0 = [cls_token + pos_embed[0]; tokens at the visible positions] [N, 1+V, D]; the depth
// adaLN-Zero blocks -> out [N, 1+V, D].
// Backward: the blocks, then dcls_token = sum over samples of dh0[CLS], dtokens += dh0 at the
// visible positions, the patch embedding and the conditioning.
final class FastEncoder {
    let branch: String
    let patchEmbed: FastPatchEmbed
    let conditioning: FastConditioning
    let blocks: [FastDiTBlock]
    struct Saved { var tokens: FT, siluC: FT, keep: [[Int]], out: FT }
    private var saved: Saved?

    init(branch: String, _ cfg: ModelConfig) {
        self.branch = branch
        patchEmbed = FastPatchEmbed(branch: branch); conditioning = FastConditioning(branch: branch)
        blocks = (0..<cfg.depth).map { FastDiTBlock(name: ActivationName.encBlock(branch, $0), key: "blocks.\($0).", heads: cfg.numHeads) }
    }

    private var s: Saved {
        guard let s = saved else { fatalError("FastEncoder \(branch): output read before a forward") }
        return s
    }
    /// The last forward's patch tokens [N, T, D], SiLU(c) [N, D], visible positions and output [N, 1+V, D].
    var tokens: FT { s.tokens }
    var siluC: FT { s.siluC }
    var keep: [[Int]] { s.keep }
    var out: FT { s.out }

    /// Encoder on x_in = c_in x (float32 [N, C, H, W]).
    func forward(_ m: FastModel, _ P: [String: FT], xIn: FT, cNoise: [Double], labels: [Int], keep: [[Int]]) throws -> FT {
        let cfg = m.cfg, N = labels.count, D = cfg.hiddenSize, Tn = cfg.tokens, V = keep[0].count
        let tokens = try patchEmbed.forward(m, P, xIn: xIn)
        let siluC = try conditioning.forward(m, P, cNoise: cNoise, labels: labels)
        let h0 = m.ws.get(branch + ".enc.in", [N, 1 + V, D])
        let cls = P["cls_token"]!, pos = P["pos_embed"]!
        for n in 0..<N {
            for i in 0..<D { h0.p[n * (1 + V) * D + i] = cls.p[i] + pos.p[i] }
            for (v, t) in keep[n].enumerated() {
                (h0.p + (n * (1 + V) + 1 + v) * D).update(from: tokens.p + (n * Tn + t) * D, count: D)
            }
        }
        var hs = [h0]
        // the streamed step's teacher keeps each block's output only (it has no backward)
        let transient = m.streamedTeacher != nil && branch == ActivationName.teacher
        for b in blocks {
            hs.append(try b.forward(m, P, hs[hs.count - 1], siluC))
            if transient { b.release(m) }
        }
        if branch == ActivationName.student { m.remember(ActivationName.tokens, tokens); m.remember(ActivationName.c, conditioning.c) }
        for (b, h) in zip(blocks, hs.dropFirst()) { m.remember(b.name, h) }
        saved = Saved(tokens: tokens, siluC: siluC, keep: keep, out: hs[cfg.depth])
        return hs[cfg.depth]
    }

    /// From dout [N, 1+V, D] and dtokens [N, T, D] (the decoder's hidden positions; added
    /// into); adds into `dsiluC` and then runs the conditioning's backward with it.
    func backward(_ m: FastModel, _ P: [String: FT], _ G: [String: FT], dOut: FT, dTokens: FT, dsiluC: FT) throws {
        let s = self.s, N = s.tokens.shape[0], Tn = s.tokens.shape[1], D = s.tokens.last, V = s.keep[0].count
        var dx = dOut
        for b in blocks.reversed() {
            dx = try b.backward(m, P, G, dy: dx, dsiluC: dsiluC)
            if m.streamedTeacher != nil { b.release(m) }   // the streamed step: done with this block
        }
        let dcls = G["cls_token"]!
        for n in 0..<N {
            for i in 0..<D { dcls.p[i] += dx.p[n * (1 + V) * D + i] }
            for (v, t) in s.keep[n].enumerated() {
                for i in 0..<D { dTokens.p[(n * Tn + t) * D + i] += dx.p[(n * (1 + V) + 1 + v) * D + i] }
            }
        }
        try m.gradOut(ActivationName.tokens(branch), "patch embed", dTokens)
        patchEmbed.backward(m, P, G, dTokens: dTokens)
        try conditioning.backward(m, P, G, dsiluC: dsiluC)
    }
}
