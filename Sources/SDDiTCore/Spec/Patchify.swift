// The token layouts of SPEC §2.1 and §2.9, one home for both backends: where each element of
// an image [N, C, H, W] sits among the tokens. Pure index maps; a backend moves its own
// values (and its backward moves gradients the other way).
public enum PatchLayout {
    /// Patchify (SPEC §2.1): [N, C, H, W] -> [N, T, C p p], each patch flattened in (c, i, j)
    /// order (the Conv2d(k = p, s = p) weight layout), token t = row (W / p) + col.
    /// Calls `body(imageIndex, tokenIndex)` for every element.
    @inlinable public static func patchify(N: Int, C: Int, H: Int, W: Int, p: Int, _ body: (_ image: Int, _ token: Int) -> Void) {
        let gh = H / p, gw = W / p, P = C * p * p
        for n in 0..<N { for r in 0..<gh { for cl in 0..<gw { for c in 0..<C { for i in 0..<p { for j in 0..<p {
            body(((n * C + c) * H + r * p + i) * W + cl * p + j, ((n * gh + r) * gw + cl) * P + (c * p + i) * p + j)
        } } } } } }
    }

    /// Unpatchify (SPEC §2.9): [N, T, p p C] ordered (i, j, c) -> [N, C, H, H] with T = (H / p)^2
    /// (reshape N,h,w,p,p,C; einsum nhwpqc -> nchpwq). Calls `body(imageIndex, tokenIndex)`.
    @inlinable public static func unpatchify(N: Int, C: Int, H: Int, p: Int, _ body: (_ image: Int, _ token: Int) -> Void) {
        let g = H / p, Tn = g * g
        for n in 0..<N { for r in 0..<g { for cl in 0..<g { for i in 0..<p { for j in 0..<p { for c in 0..<C {
            body(((n * C + c) * H + r * p + i) * H + cl * p + j, ((n * Tn + r * g + cl) * p * p + i * p + j) * C + c)
        } } } } } }
    }
}
