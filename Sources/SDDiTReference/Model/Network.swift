// The network F of SPEC §2 (encoder, decoder, final layer) and the DINO head of §4,
// each a forward/backward pair over named parameters.

public typealias Activations<T: RefScalar> = [String: Tensor<T>]

/// Conditioning c = MLP(freq(c_noise)) + table[y] (SPEC §2.3); SiLU(c) feeds every adaLN.
struct Conditioning<T: RefScalar> {
    var temb: Tensor<T>, t1: Tensor<T>, t1s: Tensor<T>, c: Tensor<T>, siluC: Tensor<T>
    let labels: [Int]
    static var mlp0: LinearLayer { LinearLayer(key: "t_embedder.mlp.0") }
    static var mlp2: LinearLayer { LinearLayer(key: "t_embedder.mlp.2") }

    init(cNoise: [T], labels: [Int], _ P: Parameters<T>) {
        self.labels = labels
        temb = TimestepFrequency.forward(cNoise)                                    // [N, 256]
        t1 = Self.mlp0.forward(temb, P)
        t1s = SiLU.forward(t1)
        c = Self.mlp2.forward(t1s, P)
        c += LabelEmbedding.forward(labels, table: P["y_embedder.embedding_table.weight"])
        siluC = SiLU.forward(c)
    }

    /// dsiluC -> dc -> table rows and the timestep MLP (its input is a constant).
    func backward(dsiluC: Tensor<T>, _ P: Parameters<T>, grads: Gradients<T>?) {
        guard let grads else { return }
        var dc = Tensor<T>.zeros(like: c)
        SiLU.backward(dy: dsiluC, x: c, dx: &dc)
        LabelEmbedding.backward(dy: dc, labels: labels, dtable: &grads["y_embedder.embedding_table.weight"].value)
        var dt1s = Tensor<T>.zeros(like: t1s)
        Self.mlp2.backward(dy: dc, x: t1s, P, grads: grads, dx: &dt1s)
        var dt1 = Tensor<T>.zeros(like: t1)
        SiLU.backward(dy: dt1s, x: t1, dx: &dt1)
        Self.mlp0.backwardParams(dy: dt1, x: temb, grads: grads)
    }
}

/// Encoder (SPEC §2.1-2.6): patch embed + pos, [CLS; visible tokens], DiT blocks.
struct Encoder<T: RefScalar> {
    var patches: Tensor<T>, tokens: Tensor<T>, cond: Conditioning<T>
    var keep: [[Int]], blocks: [DiTBlock.Cache<T>] = [], out: Tensor<T>

    static var embed: LinearLayer { LinearLayer(key: "x_embedder.proj") }

    /// xIn = c_in x [N, C, H, W]; keep [N][V] visible token indices, ascending. Without
    /// `keepCaches` (the teacher: no backward) no block keeps what its backward would read.
    init(_ cfg: ModelConfig, xIn: Tensor<T>, cNoise: [T], labels: [Int], keep: [[Int]],
         _ P: Parameters<T>, acts: inout Activations<T>?, prefix: String, keepCaches: Bool = true) {
        let N = xIn.shape[0], D = cfg.hiddenSize, Tn = cfg.tokens, V = keep[0].count
        self.keep = keep
        patches = Patchify.forward(xIn, p: cfg.patchSize)                           // [N, T, C p p]
        let w = P["x_embedder.proj.weight"]
        tokens = Linear.forward(patches, weight: w.reshaped([D, cfg.patchDim]), bias: P["x_embedder.proj.bias"])
        let pos = P["pos_embed"]                                                     // [1, 1+T, D]
        for n in 0..<N { for i in 0..<(Tn * D) { tokens.data[n * Tn * D + i] += pos.data[D + i] } }
        cond = Conditioning(cNoise: cNoise, labels: labels, P)
        // h0 = [cls_token + pos_embed[0]; tokens[keep]]
        let vis = TokenGather.forward(tokens, keep: keep)
        var h = [T](); h.reserveCapacity(N * (1 + V) * D)
        let cls = P["cls_token"]
        for n in 0..<N {
            for i in 0..<D { h.append(cls.data[i] + pos.data[i]) }
            h += vis.data[(n * V * D)..<((n + 1) * V * D)]
        }
        var x = Tensor(shape: [N, 1 + V, D], data: h)
        if acts != nil, prefix == ActivationName.student { acts![ActivationName.tokens] = tokens; acts![ActivationName.c] = cond.c }
        for i in 0..<cfg.depth {
            let (y, cache) = DiTBlock(prefix: "blocks.\(i).", heads: cfg.numHeads).forward(x, siluC: cond.siluC, P)
            if keepCaches { blocks.append(cache) }
            x = y
            if acts != nil { acts![ActivationName.encBlock(prefix, i)] = x }
            RefProgress.block(prefix + ".enc", i, of: cfg.depth)
        }
        out = x
    }

    /// dOut [N, 1+V, D]; dTokens: gradient already reaching `tokens` from the decoder input.
    func backward(_ cfg: ModelConfig, dOut: Tensor<T>, dTokens: Tensor<T>, dsiluC: Tensor<T>,
                  _ P: Parameters<T>, grads: Gradients<T>) {
        var dsc = dsiluC, dx = dOut
        for i in stride(from: cfg.depth - 1, through: 0, by: -1) {
            dx = DiTBlock(prefix: "blocks.\(i).", heads: cfg.numHeads)
                .backward(dy: dx, blocks[i], siluC: cond.siluC, P, grads: grads, dsiluC: &dsc)
            grads.finished("blocks.\(i).")
            RefProgress.block("student.enc", i, of: cfg.depth, backward: true)
        }
        let N = dx.shape[0], V = dx.shape[1] - 1, D = dx.lastDim
        var dvis = [T](); dvis.reserveCapacity(N * V * D)
        let dcls = grads["cls_token"]
        for n in 0..<N {
            let lo: Int = n * (1 + V) * D
            for i in 0..<D { dcls.value.data[i] += dx.data[lo + i] }
            dvis += dx.data[(lo + D)..<(lo + (1 + V) * D)]
        }
        var dtok = dTokens
        TokenGather.backward(dy: Tensor(shape: [N, V, D], data: dvis), keep: keep, dx: &dtok)
        // tokens = patches W^T + b + pos (pos is fixed)
        let g = grads["x_embedder.proj.weight"]
        var dw = g.value.reshaped([D, cfg.patchDim])
        var db: Tensor<T>? = grads["x_embedder.proj.bias"].value
        Linear.backwardParams(dy: dtok, x: patches, dw: &dw, db: &db)
        g.value = dw.reshaped(g.value.shape)
        grads["x_embedder.proj.bias"].value = db!
        cond.backward(dsiluC: dsc, P, grads: grads)
    }
}

/// Decoder (SPEC §2.7-2.9): H = scatter(tokens, enc[:, 1:]), decoder_layer, blocks, final layer.
struct Decoder<T: RefScalar> {
    var H: Tensor<T>, layer0: ModulatedLinear<T>
    var blocks: [DiTBlock.Cache<T>] = [], z: Tensor<T>, final: ModulatedLinear<T>
    var out: Tensor<T> { final.out }
    let keep: [[Int]]

    /// Returns with `out` [N, T, p p C] (before unpatchify).
    init(_ cfg: ModelConfig, tokens: Tensor<T>, enc: Tensor<T>, siluC: Tensor<T>, keep: [[Int]],
         _ P: Parameters<T>, acts: inout Activations<T>?) {
        self.keep = keep
        let N = enc.shape[0], V = enc.shape[1] - 1, D = enc.lastDim
        var vis = [T](); vis.reserveCapacity(N * V * D)
        for n in 0..<N {
            let lo: Int = n * (1 + V) * D
            vis += enc.data[(lo + D)..<(lo + (1 + V) * D)]
        }
        let encVis = Tensor(shape: [N, V, D], data: vis)
        H = TokenScatter.forward(base: tokens, encVis, keep: keep)                  // [N, T, D]
        layer0 = ModulatedLinear(prefix: "decoder_layer.", H, siluC: siluC, P)     // [N, T, Dd]
        var x = layer0.out
        let pos = P["decoder_pos_embed"], per = pos.count
        for n in 0..<N { for i in 0..<per { x.data[n * per + i] += pos.data[i] } }
        if acts != nil { acts![ActivationName.decIn] = H }
        for i in 0..<cfg.decoderDepth {
            let (y, cache) = DiTBlock(prefix: "decoder_blocks.\(i).", heads: cfg.decoderNumHeads).forward(x, siluC: siluC, P)
            blocks.append(cache)
            x = y
            if acts != nil { acts![ActivationName.decBlock(i)] = x }
            RefProgress.block("student.dec", i, of: cfg.decoderDepth)
        }
        z = x
        final = ModulatedLinear(prefix: "final_layer.", z, siluC: siluC, P)        // [N, T, p p C]
    }

    /// Returns (dTokens at hidden positions, dEnc [N, 1+V, D] with a zero CLS row); adds to dsiluC.
    func backward(_ cfg: ModelConfig, dOut: Tensor<T>, siluC: Tensor<T>, _ P: Parameters<T>,
                  grads: Gradients<T>, dsiluC: inout Tensor<T>) -> (dTokens: Tensor<T>, dEnc: Tensor<T>) {
        var dx = final.backward(dy: dOut, x: z, siluC: siluC, P, grads: grads, dsiluC: &dsiluC)
        for i in stride(from: cfg.decoderDepth - 1, through: 0, by: -1) {
            dx = DiTBlock(prefix: "decoder_blocks.\(i).", heads: cfg.decoderNumHeads)
                .backward(dy: dx, blocks[i], siluC: siluC, P, grads: grads, dsiluC: &dsiluC)
            grads.finished("decoder_blocks.\(i).")
            RefProgress.block("student.dec", i, of: cfg.decoderDepth, backward: true)
        }
        let dH = layer0.backward(dy: dx, x: H, siluC: siluC, P, grads: grads, dsiluC: &dsiluC)
        let N = H.shape[0], D = H.lastDim, V = keep[0].count
        var dTokens = Tensor<T>.zeros(like: H), dVis = Tensor<T>.zeros([N, V, D])
        TokenScatter.backward(dy: dH, keep: keep, dbase: &dTokens, denc: &dVis)
        var dEnc = Tensor<T>.zeros([N, 1 + V, D])
        for n in 0..<N { for i in 0..<(V * D) { dEnc.data[n * (1 + V) * D + D + i] = dVis.data[n * V * D + i] } }
        return (dTokens, dEnc)
    }
}

/// DINO projection head (SPEC §4), row-wise: Linear, GELU(erf), Linear, GELU, Linear,
/// L2-normalize, weight-normalized Linear(B, K, no bias).
struct ProjectionHead<T: RefScalar> {
    var x: Tensor<T>, h1: Tensor<T>, g1: Tensor<T>, h2: Tensor<T>, g2: Tensor<T>, h3: Tensor<T>
    var u: Tensor<T>, norms: [T], out: Tensor<T>
    static var l0: LinearLayer { LinearLayer(key: "head.mlp.0") }
    static var l2: LinearLayer { LinearLayer(key: "head.mlp.2") }
    static var l4: LinearLayer { LinearLayer(key: "head.mlp.4") }

    init(_ x: Tensor<T>, _ P: Parameters<T>) {
        self.x = x
        h1 = Self.l0.forward(x, P); g1 = GELUErf.forward(h1)
        h2 = Self.l2.forward(g1, P); g2 = GELUErf.forward(h2)
        h3 = Self.l4.forward(g2, P)
        (u, norms) = L2Normalize.forward(h3)
        out = WeightNormLinear.forward(u, v: P["head.last_layer.weight_v"], g: P["head.last_layer.weight_g"])
    }

    func backward(dOut: Tensor<T>, _ P: Parameters<T>, grads: Gradients<T>) -> Tensor<T> {
        var du = Tensor<T>.zeros(like: u)
        WeightNormLinear.backward(dy: dOut, x: u, v: P["head.last_layer.weight_v"], g: P["head.last_layer.weight_g"],
                                  dx: &du, dv: &grads["head.last_layer.weight_v"].value)
        var dh3 = Tensor<T>.zeros(like: h3)
        L2Normalize.backward(dy: du, y: u, norms: norms, dx: &dh3)
        var dg2 = Tensor<T>.zeros(like: g2)
        Self.l4.backward(dy: dh3, x: g2, P, grads: grads, dx: &dg2)
        var dh2 = Tensor<T>.zeros(like: h2)
        GELUErf.backward(dy: dg2, x: h2, dx: &dh2)
        var dg1 = Tensor<T>.zeros(like: g1)
        Self.l2.backward(dy: dh2, x: g1, P, grads: grads, dx: &dg1)
        var dh1 = Tensor<T>.zeros(like: h1)
        GELUErf.backward(dy: dg1, x: h1, dx: &dh1)
        var dx = Tensor<T>.zeros(like: x)
        Self.l0.backward(dy: dh1, x: x, P, grads: grads, dx: &dx)
        grads.finished("head.")
        return dx
    }
}
