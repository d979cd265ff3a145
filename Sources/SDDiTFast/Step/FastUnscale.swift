import SDDiTCore

// Unscaling (PyTorch's GradScaler.unscale_): g <- g / s for every parameter gradient, s the
// loss scale (skipped at s = 1, where it is exact), rounded to the half type in pure modes;
// then the finite check GradScaler's step decision reads.
enum FastUnscale {
    /// Unscales `grads` and returns the first non-finite gradient, in the order of `keys` (the
    /// config's parameter order: the same report in every process), and its flat index.
    static func apply(_ ctx: FastContext, _ grads: TensorTable, keys: [String], scale: Float) -> (key: String, index: Int)? {
        var first: (String, Int)?
        let prec = ctx.prec
        for key in keys {
            guard let g = grads[key] else { continue }
            if scale != 1 { let gp = g.p; parallelRanges(g.count) { lo, hi in for i in lo..<hi { gp[i] /= scale } } }
            if prec.isPure { prec.round(g.p, g.count) }
            if first == nil, !vallFinite(g.p, g.count) { first = (key, (0..<g.count).first { !g.p[$0].isFinite } ?? 0) }
        }
        return first
    }
}
