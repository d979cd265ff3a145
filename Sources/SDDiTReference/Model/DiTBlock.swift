// adaLN-Zero DiT block (SPEC §2.6), encoder and decoder alike. x [N, L, W], c [N, D]:
//   shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))
//   x1 = x  + gate1 * proj(Attn(qkv(modulate(LN(x),  shift1, scale1))))
//   y  = x1 + gate2 * fc2(GELU_tanh(fc1(modulate(LN(x1), shift2, scale2))))
public struct DiTBlock {
    public let prefix: String   // "blocks.I." or "decoder_blocks.I."
    public let heads: Int
    public init(prefix: String, heads: Int) { self.prefix = prefix; self.heads = heads }

    public struct Cache<T: RefScalar> {
        var x: Tensor<T>, mod: Tensor<T>
        var ln1: Tensor<T>, ln1s: LayerNorm.Saved<T>, m1: Tensor<T>, qkv: Tensor<T>
        var att: Attention.Saved<T>, a: Tensor<T>, proj: Tensor<T>
        var x1: Tensor<T>, ln2: Tensor<T>, ln2s: LayerNorm.Saved<T>, m2: Tensor<T>
        var f1: Tensor<T>, g: Tensor<T>, f2: Tensor<T>
    }

    var adaLN: LinearLayer { LinearLayer(key: prefix + "adaLN_modulation.1") }
    var qkvL: LinearLayer { LinearLayer(key: prefix + "attn.qkv") }
    var projL: LinearLayer { LinearLayer(key: prefix + "attn.proj") }
    var fc1L: LinearLayer { LinearLayer(key: prefix + "mlp.fc1") }
    var fc2L: LinearLayer { LinearLayer(key: prefix + "mlp.fc2") }

    /// `siluC` = SiLU(c) [N, D], computed once per forward and shared by every adaLN.
    public func forward<T: RefScalar>(_ x: Tensor<T>, siluC: Tensor<T>, _ P: Parameters<T>) -> (Tensor<T>, Cache<T>) {
        let mod = adaLN.forward(siluC, P)                                            // [N, 6W]
        let (ln1, ln1s) = LayerNorm.forward(x)
        let m1 = Modulate.forward(ln1, shift: Chunk.piece(mod, 0, of: 6), scale: Chunk.piece(mod, 1, of: 6))
        let qkv = qkvL.forward(m1, P)                                                 // [N, L, 3W]
        let (a, att) = Attention.forward(qkv, heads: heads)                           // [N, L, W]
        let proj = projL.forward(a, P)
        let x1 = GatedResidual.forward(x, gate: Chunk.piece(mod, 2, of: 6), proj)
        let (ln2, ln2s) = LayerNorm.forward(x1)
        let m2 = Modulate.forward(ln2, shift: Chunk.piece(mod, 3, of: 6), scale: Chunk.piece(mod, 4, of: 6))
        let f1 = fc1L.forward(m2, P)                                                  // [N, L, 4W]
        let g = GELUTanh.forward(f1)
        let f2 = fc2L.forward(g, P)
        let y = GatedResidual.forward(x1, gate: Chunk.piece(mod, 5, of: 6), f2)
        return (y, Cache(x: x, mod: mod, ln1: ln1, ln1s: ln1s, m1: m1, qkv: qkv, att: att, a: a, proj: proj,
                         x1: x1, ln2: ln2, ln2s: ln2s, m2: m2, f1: f1, g: g, f2: f2))
    }

    /// The forward read bottom-up; returns dx, adds into `grads` and `dsiluC`.
    public func backward<T: RefScalar>(dy: Tensor<T>, _ k: Cache<T>, siluC: Tensor<T>, _ P: Parameters<T>,
                                grads: Gradients<T>?, dsiluC: inout Tensor<T>) -> Tensor<T> {
        var dmod = Tensor<T>.zeros(like: k.mod)
        func piece(_ i: Int) -> Tensor<T> { Chunk.piece(k.mod, i, of: 6) }
        // MLP branch
        var dx1 = Tensor<T>.zeros(like: k.x1), df2 = Tensor<T>.zeros(like: k.f2)
        var dgate2 = Tensor<T>.zeros(like: piece(5))
        GatedResidual.backward(dy: dy, gate: piece(5), h: k.f2, dx: &dx1, dgate: &dgate2, dh: &df2)
        var dg = Tensor<T>.zeros(like: k.g)
        fc2L.backward(dy: df2, x: k.g, P, grads: grads, dx: &dg)
        var df1 = Tensor<T>.zeros(like: k.f1)
        GELUTanh.backward(dy: dg, x: k.f1, dx: &df1)
        var dm2 = Tensor<T>.zeros(like: k.m2)
        fc1L.backward(dy: df1, x: k.m2, P, grads: grads, dx: &dm2)
        var dln2 = Tensor<T>.zeros(like: k.ln2), dsh2 = Tensor<T>.zeros(like: piece(3)), dsc2 = dsh2
        Modulate.backward(dy: dm2, h: k.ln2, scale: piece(4), dh: &dln2, dshift: &dsh2, dscale: &dsc2)
        LayerNorm.backward(dy: dln2, x: k.x1, saved: k.ln2s, dx: &dx1)
        // attention branch
        var dx = Tensor<T>.zeros(like: k.x), dproj = Tensor<T>.zeros(like: k.proj)
        var dgate1 = Tensor<T>.zeros(like: piece(2))
        GatedResidual.backward(dy: dx1, gate: piece(2), h: k.proj, dx: &dx, dgate: &dgate1, dh: &dproj)
        var da = Tensor<T>.zeros(like: k.a)
        projL.backward(dy: dproj, x: k.a, P, grads: grads, dx: &da)
        var dqkv = Tensor<T>.zeros(like: k.qkv)
        Attention.backward(dy: da, qkv: k.qkv, heads: heads, saved: k.att, dqkv: &dqkv)
        var dm1 = Tensor<T>.zeros(like: k.m1)
        qkvL.backward(dy: dqkv, x: k.m1, P, grads: grads, dx: &dm1)
        var dln1 = Tensor<T>.zeros(like: k.ln1), dsh1 = Tensor<T>.zeros(like: piece(0)), dsc1 = dsh1
        Modulate.backward(dy: dm1, h: k.ln1, scale: piece(1), dh: &dln1, dshift: &dsh1, dscale: &dsc1)
        LayerNorm.backward(dy: dln1, x: k.x, saved: k.ln1s, dx: &dx)
        // adaLN
        for (i, d) in [dsh1, dsc1, dgate1, dsh2, dsc2, dgate2].enumerated() { Chunk.addPiece(d, i, of: 6, into: &dmod) }
        adaLN.backward(dy: dmod, x: siluC, P, grads: grads, dx: &dsiluC)
        return dx
    }
}
