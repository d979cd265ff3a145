import SDDiTCore

// Unpatchify (SPEC §2.9; the reference's Unpatchify, Core's PatchLayout): tokens
// [N, T, p p C] ordered (i, j, c) -> an image [N, C, H, W]. Backward: the same
// permutation in reverse (dtokens from dimage).
enum FastUnpatchify {
    static func forward(_ cfg: ModelConfig, _ tokens: FT, _ img: FT) {
        let tp = tokens.p, ip = img.p
        PatchLayout.unpatchify(N: img.shape[0], C: cfg.inChannels, H: cfg.inputSize, p: cfg.patchSize) { a, b in ip[a] = tp[b] }
    }

    static func backward(_ cfg: ModelConfig, dImage: FT, dTokens: FT) {
        let tp = dTokens.p, ip = dImage.p
        PatchLayout.unpatchify(N: dImage.shape[0], C: cfg.inChannels, H: cfg.inputSize, p: cfg.patchSize) { a, b in tp[b] = ip[a] }
    }
}
