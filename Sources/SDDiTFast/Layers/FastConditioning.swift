import SDDiTCore

// Conditioning (SPEC §2.3; the reference's Conditioning): c [N, D] = t_embedder(c_noise) +
// y_embedder(y), with
//   temb = [cos(c_noise f_j), sin(c_noise f_j)] [N, 256]   (Core's TimestepFrequency, in Double)
//   t1 = mlp.0(temb), t1s = SiLU(t1), c = mlp.2(t1s) + table[y];  SiLU(c) feeds every adaLN.
// Backward: dc = SiLU'(c) dSiLU(c); dtable[y] += dc; dt1 = SiLU'(t1) (dc W_2); the
// mlp's weight and bias gradients (no gradient to c_noise).
final class FastConditioning: FastParameterized {
    let branch: String   // "student", "teacher" or "dit"
    struct Weights {
        let mlp0, mlp2: LinearParameters, table: FT
        init(_ T: TensorTable) {
            mlp0 = T.linear("t_embedder.mlp.0."); mlp2 = T.linear("t_embedder.mlp.2.")
            table = T.tensor("y_embedder.embedding_table.weight")
        }
    }
    private var w: Weights?, g: Weights?
    struct Saved { var temb: FT, t1: FT, t1s: FT, c: FT, siluC: FT, labels: [Int] }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    func bind(_ P: TensorTable, gradients G: TensorTable?) { w = Weights(P); g = G.map { Weights($0) } }

    /// Returns SiLU(c) [N, D].
    func forward(_ ctx: FastContext, cNoise: [Double], labels: [Int]) throws -> FT {
        guard let w else { preconditionFailure("FastConditioning \(branch): used before its parameters were bound") }
        let k = ctx.k, ws = ctx.ws, pre = branch
        let N = labels.count, D = ctx.cfg.hiddenSize
        let temb = ws.get(pre + ".temb", [N, 256])
        let f: Tensor<Double> = TimestepFrequency.forward(cNoise)
        for i in 0..<f.count { temb.p[i] = Float(f.data[i]) }
        if ctx.variant.timestepSinFirst {   // a divergence: [sin, cos] (diffusers' flip_sin_to_cos=False)
            for n in 0..<N { for i in 0..<128 { let a = temb.p[n * 256 + i]; temb.p[n * 256 + i] = temb.p[n * 256 + 128 + i]; temb.p[n * 256 + 128 + i] = a } }
        }
        let t1 = ws.get(pre + ".t1", [N, D]), t1s = ws.get(pre + ".t1s", [N, D]), c = ws.get(pre + ".c", [N, D])
        k.linear(temb, w.mlp0, t1)
        k.silu(t1, t1s)
        k.linear(t1s, w.mlp2, c)
        for n in 0..<N { for i in 0..<D { c.p[n * D + i] += w.table.p[labels[n] * D + i] } }
        try ctx.out(ActivationName.c(pre), "c = t_embedder(c_noise) + y_embedder(y)", c, [(ActivationName.t1(pre), t1)])
        let siluC = ws.get(pre + ".siluC", [N, D])
        k.silu(c, siluC)
        saved = Saved(temb: temb, t1: t1, t1s: t1s, c: c, siluC: siluC, labels: labels)
        return siluC
    }

    /// c [N, D] of the last forward.
    var c: FT {
        guard let s = saved else { preconditionFailure("FastConditioning \(branch): c read before a forward") }
        return s.c
    }

    /// Adds the conditioning's parameter gradients from dSiLU(c).
    func backward(_ ctx: FastContext, dsiluC: FT) throws {
        guard let s = saved, let w, let g else { preconditionFailure("FastConditioning \(branch): backward without a forward or gradients") }
        let k = ctx.k, ws = ctx.ws, d = "d." + branch
        let N = s.labels.count, D = ctx.cfg.hiddenSize
        let dc = ws.get(d + ".c", [N, D])
        k.siluBackward(dsiluC, s.c, dc, accumulate: false)
        try ctx.gradOut(ActivationName.c(branch), "SiLU", dc)
        for n in 0..<N { for i in 0..<D { g.table.p[s.labels[n] * D + i] += dc.p[n * D + i] } }
        let dt1s = ws.get(d + ".t1s", [N, D], zero: true)
        k.linearBackward(dc, s.t1s, w.mlp2, dx: dt1s, g.mlp2)
        let dt1 = ws.get(d + ".t1", [N, D])
        k.siluBackward(dt1s, s.t1, dt1, accumulate: false)
        k.linearBackward(dt1, s.temb, w.mlp0, dx: nil, g.mlp0)
    }
}
