import SDDiTCore

// Conditioning (SPEC §2.3; the reference's Conditioning): c [N, D] = t_embedder(c_noise) +
// y_embedder(y), with
//   temb = [cos(c_noise f_j), sin(c_noise f_j)] [N, 256]   (FastModel.timestepEmbedding)
//   t1 = mlp.0(temb), t1s = SiLU(t1), c = mlp.2(t1s) + table[y];  SiLU(c) feeds every adaLN.
// Backward: dc = SiLU'(c) dSiLU(c); dtable[y] += dc; dt1 = SiLU'(t1) (dc W_2); the
// mlp's weight and bias gradients (no gradient to c_noise).
final class FastConditioning {
    let branch: String   // "student", "teacher" or "dit"
    struct Saved { var temb: FT, t1: FT, t1s: FT, c: FT, siluC: FT, labels: [Int] }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    /// Returns SiLU(c) [N, D].
    func forward(_ m: FastModel, _ P: [String: FT], cNoise: [Double], labels: [Int]) throws -> FT {
        let k = m.k, ws = m.ws, pre = branch
        let N = labels.count, D = m.cfg.hiddenSize
        let temb = ws.get(pre + ".temb", [N, 256])
        m.timestepEmbedding(cNoise, temb)
        let t1 = ws.get(pre + ".t1", [N, D]), t1s = ws.get(pre + ".t1s", [N, D]), c = ws.get(pre + ".c", [N, D])
        k.linear(temb, P["t_embedder.mlp.0.weight"]!, P["t_embedder.mlp.0.bias"]!, t1)
        k.silu(t1, t1s)
        k.linear(t1s, P["t_embedder.mlp.2.weight"]!, P["t_embedder.mlp.2.bias"]!, c)
        let table = P["y_embedder.embedding_table.weight"]!
        for n in 0..<N { for i in 0..<D { c.p[n * D + i] += table.p[labels[n] * D + i] } }
        try m.out(ActivationName.c(pre), "c = t_embedder(c_noise) + y_embedder(y)", c, [(ActivationName.t1(pre), t1)])
        let siluC = ws.get(pre + ".siluC", [N, D])
        k.silu(c, siluC)
        saved = Saved(temb: temb, t1: t1, t1s: t1s, c: c, siluC: siluC, labels: labels)
        return siluC
    }

    /// c [N, D] of the last forward.
    var c: FT {
        guard let s = saved else { fatalError("FastConditioning \(branch): c read before a forward") }
        return s.c
    }

    /// Adds the conditioning's parameter gradients from dSiLU(c).
    func backward(_ m: FastModel, _ P: [String: FT], _ G: [String: FT], dsiluC: FT) throws {
        guard let s = saved else { fatalError("FastConditioning \(branch): backward without a forward") }
        let k = m.k, ws = m.ws, d = "d." + branch
        let N = s.labels.count, D = m.cfg.hiddenSize
        let dc = ws.get(d + ".c", [N, D])
        k.siluBackward(dsiluC, s.c, dc, accumulate: false)
        try m.gradOut(ActivationName.c(branch), "SiLU", dc)
        let table = G["y_embedder.embedding_table.weight"]!
        for n in 0..<N { for i in 0..<D { table.p[s.labels[n] * D + i] += dc.p[n * D + i] } }
        let dt1s = ws.get(d + ".t1s", [N, D], zero: true)
        k.linearBackward(dc, s.t1s, P["t_embedder.mlp.2.weight"]!, dx: dt1s, dw: G["t_embedder.mlp.2.weight"], db: G["t_embedder.mlp.2.bias"])
        let dt1 = ws.get(d + ".t1", [N, D])
        k.siluBackward(dt1s, s.t1, dt1, accumulate: false)
        k.linearBackward(dt1, s.temb, P["t_embedder.mlp.0.weight"]!, dx: nil, dw: G["t_embedder.mlp.0.weight"], db: G["t_embedder.mlp.0.bias"])
    }
}
