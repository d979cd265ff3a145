// DiT's FinalLayer shape (SPEC §2.7, §2.9), SD-DiT's decoder_layer and final_layer alike.
// x [N, L, W], SiLU(c) [N, D]:
//   shift, scale = Linear_adaLN(SiLU(c));  y = Linear(modulate(LN(x), shift, scale))
struct ModulatedLinear<T: RefScalar> {
    let prefix: String   // "decoder_layer." or "final_layer."
    var ln: Tensor<T>, lnSaved: LayerNorm.Saved<T>, mod: Tensor<T>, m: Tensor<T>, out: Tensor<T>

    var adaLN: LinearLayer { LinearLayer(key: prefix + "adaLN_modulation.1") }
    var linear: LinearLayer { LinearLayer(key: prefix + "linear") }

    init(prefix: String, _ x: Tensor<T>, siluC: Tensor<T>, _ P: Parameters<T>) {
        self.prefix = prefix
        (ln, lnSaved) = LayerNorm.forward(x)
        mod = LinearLayer(key: prefix + "adaLN_modulation.1").forward(siluC, P)     // [N, 2W]
        m = Modulate.forward(ln, shift: Chunk.piece(mod, 0, of: 2), scale: Chunk.piece(mod, 1, of: 2))
        out = LinearLayer(key: prefix + "linear").forward(m, P)
    }

    /// dm = dy W;  d(shift, scale) by modulate's backward -> dSiLU(c) += dmod W_adaLN;
    /// returns dx = LN's backward of d LN(x). The layer's gradients are then final.
    func backward(dy: Tensor<T>, x: Tensor<T>, siluC: Tensor<T>, _ P: Parameters<T>,
                  grads: Gradients<T>, dsiluC: inout Tensor<T>) -> Tensor<T> {
        var dm = Tensor<T>.zeros(like: m)
        linear.backward(dy: dy, x: m, P, grads: grads, dx: &dm)
        var dln = Tensor<T>.zeros(like: ln), dmod = Tensor<T>.zeros(like: mod)
        var dshift = Tensor<T>.zeros(like: Chunk.piece(mod, 0, of: 2)), dscale = dshift
        Modulate.backward(dy: dm, h: ln, scale: Chunk.piece(mod, 1, of: 2), dh: &dln, dshift: &dshift, dscale: &dscale)
        Chunk.addPiece(dshift, 0, of: 2, into: &dmod); Chunk.addPiece(dscale, 1, of: 2, into: &dmod)
        adaLN.backward(dy: dmod, x: siluC, P, grads: grads, dx: &dsiluC)
        grads.finished(prefix)
        var dx = Tensor<T>.zeros(like: x)
        LayerNorm.backward(dy: dln, x: x, saved: lnSaved, dx: &dx)
        return dx
    }
}
