import SDDiTCore

// Unpatchify (SPEC §2.9; the reference's Unpatchify, Core's PatchLayout): tokens
// [N, T, p p C] ordered (i, j, c) -> an image [N, C, H, W]. Backward: the same
// permutation in reverse (dtokens from dimage). `cij`: a divergence, the token vector read in
// (c, i, j) order: element (i p + j) C + c is taken from c p p + i p + j.
enum FastUnpatchify {
    static func forward(_ cfg: ModelConfig, _ tokens: FT, _ img: FT, cij: Bool = false) {
        let tp = tokens.p, ip = img.p, map = tokenIndex(cfg, cij)
        PatchLayout.unpatchify(N: img.shape[0], C: cfg.inChannels, H: cfg.inputSize, p: cfg.patchSize) { a, b in ip[a] = tp[map(b)] }
    }

    static func backward(_ cfg: ModelConfig, dImage: FT, dTokens: FT, cij: Bool = false) {
        let tp = dTokens.p, ip = dImage.p, map = tokenIndex(cfg, cij)
        PatchLayout.unpatchify(N: dImage.shape[0], C: cfg.inChannels, H: cfg.inputSize, p: cfg.patchSize) { a, b in tp[map(b)] = ip[a] }
    }

    /// The token element SPEC's index b reads: b itself, or under `cij` its (c, i, j) position.
    private static func tokenIndex(_ cfg: ModelConfig, _ cij: Bool) -> (Int) -> Int {
        guard cij else { return { $0 } }
        let C = cfg.inChannels, pp = cfg.patchSize * cfg.patchSize, width = pp * C
        return { b in let base = b - b % width, q = b % width; return base + (q % C) * pp + q / C }
    }
}
