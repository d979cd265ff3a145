import SDDiTCore

// The DINO projection head (SPEC §4; the reference's ProjectionHead) over rows x [R, D]:
//   h1 = mlp.0(x), g1 = GELU(h1), h2 = mlp.2(g1), g2 = GELU(h2), h3 = mlp.4(g2) [R, B]  (exact GELU)
//   u = h3 / max(||h3||, 1e-12)                                                       (F.normalize)
//   w = g v / ||v|| row-wise [K, B] (weight norm);  out = u w^T [R, K]
// Backward: du = dout w, dw = dout^T u; dv += g/||v|| (dw - vhat (vhat . dw));
// dh3 = (du - u (u . du)) / ||h3|| (du / 1e-12 below eps); then the MLP.
final class FastProjectionHead: FastParameterized {
    let branch: String   // "student" or "teacher"
    /// The MLP and the last layer's direction v; its norm g is fixed (DINO's norm_last_layer).
    struct Weights {
        let mlp0, mlp2, mlp4: LinearParameters, v: FT
        init(_ T: TensorTable) {
            mlp0 = T.linear("head.mlp.0."); mlp2 = T.linear("head.mlp.2."); mlp4 = T.linear("head.mlp.4.")
            v = T.tensor("head.last_layer.weight_v")
        }
    }
    private var w: Weights?, dw: Weights?, weightG: FT?, dWeightG: FT?
    struct Saved { var x: FT, h1: FT, g1: FT, h2: FT, g2: FT, h3: FT, u: FT, norms: FT, w: FT, vnorm: FT }
    private var saved: Saved?

    init(branch: String) { self.branch = branch }

    func bind(_ P: TensorTable, gradients G: TensorTable?) {
        w = Weights(P); dw = G.map { Weights($0) }; weightG = P.tensor(ModelConfig.weightGKey)
        dWeightG = G?[ModelConfig.weightGKey]   // only where weight_g is trained (a divergence)
    }

    /// out [R, K] from x [R, D].
    func forward(_ ctx: FastContext, _ x: FT) throws -> FT {
        guard let w, let weightG else { preconditionFailure("FastProjectionHead \(branch): used before its parameters were bound") }
        let k = ctx.k, ws = ctx.ws, cfg = ctx.cfg, pre = branch, Hd = ActivationName.Head.self
        let R = x.rows, Hh = cfg.headHiddenDim, B = cfg.headBottleneckDim, K = cfg.headOutDim
        let h1 = ws.get(pre + ".head.h1", [R, Hh]), g1 = ws.get(pre + ".head.g1", [R, Hh])
        let h2 = ws.get(pre + ".head.h2", [R, Hh]), g2 = ws.get(pre + ".head.g2", [R, Hh])
        let h3 = ws.get(pre + ".head.h3", [R, B]), u = ws.get(pre + ".head.u", [R, B]), norms = ws.get(pre + ".head.norms", [R])
        k.linear(x, w.mlp0, h1)
        try ctx.out(Hd.mlp(pre, 0), "head Linear", h1, [("x", x)])
        let tanhGELU = ctx.variant.headGELUTanh   // a divergence: DiT's tanh GELU in DINO's head
        if tanhGELU { k.geluTanh(h1, g1) } else { k.geluErf(h1, g1) }
        k.linear(g1, w.mlp2, h2)
        try ctx.out(Hd.mlp(pre, 2), "head Linear", h2, [("gelu", g1)])
        if tanhGELU { k.geluTanh(h2, g2) } else { k.geluErf(h2, g2) }
        k.linear(g2, w.mlp4, h3)
        try ctx.out(Hd.mlp(pre, 4), "head Linear", h3, [("gelu", g2)])
        for r in 0..<R {   // F.normalize, eps 1e-12, float32
            var s: Float = 0
            for i in 0..<B { s += h3.p[r * B + i] * h3.p[r * B + i] }
            let nrm = s.squareRoot(), d = max(nrm, 1e-12)
            norms.p[r] = nrm
            for i in 0..<B { u.p[r * B + i] = h3.p[r * B + i] / d }
        }
        try ctx.out(Hd.normalized(pre), "F.normalize", u, [("head.mlp.4", h3)])
        let v = w.v, gg = weightG
        let wn = ws.get(pre + ".head.wn", [K, B]), vnorm = ws.get(pre + ".head.vnorm", [K])
        for kk in 0..<K {
            var s: Float = 0
            for i in 0..<B { s += v.p[kk * B + i] * v.p[kk * B + i] }
            vnorm.p[kk] = s.squareRoot()
            for i in 0..<B { wn.p[kk * B + i] = gg.p[kk] * v.p[kk * B + i] / vnorm.p[kk] }
        }
        let o = ws.get(Hd.out(pre), [R, K])
        k.linear(u, wn, nil, o)
        try ctx.out(Hd.out(pre), "weight-normalized last layer", o, [("normalized", u)])
        saved = Saved(x: x, h1: h1, g1: g1, h2: h2, g2: g2, h3: h3, u: u, norms: norms, w: wn, vnorm: vnorm)
        return o
    }

    /// dx [R, D] from dout [R, K]; adds into the head's parameter gradients.
    func backward(_ ctx: FastContext, dOut: FT) throws -> FT {
        guard let s = saved, let w, let weightG, let G = self.dw else { preconditionFailure("FastProjectionHead \(branch): backward without a forward or gradients") }
        let k = ctx.k, ws = ctx.ws, cfg = ctx.cfg, pre = branch, d = "d." + branch, Hd = ActivationName.Head.self
        let R = s.x.rows, B = cfg.headBottleneckDim, K = cfg.headOutDim
        let du = ws.get(d + ".head.u", [R, B], zero: true)
        let dw = ws.get(d + ".head.wn", [K, B], zero: true)
        k.linearBackward(dOut, s.u, s.w, dx: du, dw: dw, db: nil)
        try ctx.gradOut(Hd.normalized(pre), "weight-normalized last layer", du, inputs: [("d head.out", dOut)])
        // weight norm: dv = g/||v|| (dw - vhat (vhat . dw)); dg = vhat . dw where g is trained
        let v = w.v, gg = weightG, dv = G.v
        for kk in 0..<K {
            let n = s.vnorm.p[kk]
            var dot: Float = 0
            for i in 0..<B { dot += v.p[kk * B + i] / n * dw.p[kk * B + i] }
            for i in 0..<B { dv.p[kk * B + i] += gg.p[kk] / n * (dw.p[kk * B + i] - v.p[kk * B + i] / n * dot) }
            dWeightG?.p[kk] += dot   // dg = vhat . dw
        }
        let dh3 = ws.get(d + ".head.h3", [R, B])
        for r in 0..<R {
            let n = s.norms.p[r]
            if n > 1e-12 {
                var dot: Float = 0
                for i in 0..<B { dot += s.u.p[r * B + i] * du.p[r * B + i] }
                for i in 0..<B { dh3.p[r * B + i] = (du.p[r * B + i] - s.u.p[r * B + i] * dot) / n }
            } else {
                for i in 0..<B { dh3.p[r * B + i] = du.p[r * B + i] / 1e-12 }
            }
        }
        try ctx.gradOut(Hd.mlp(pre, 4), "F.normalize", dh3)
        let Hh = cfg.headHiddenDim
        let dg2 = ws.get(d + ".head.g2", [R, Hh], zero: true)
        k.linearBackward(dh3, s.g2, w.mlp4, dx: dg2, G.mlp4)
        let dh2 = ws.get(d + ".head.h2", [R, Hh])
        let tanhGELU = ctx.variant.headGELUTanh
        if tanhGELU { k.geluTanhBackward(dg2, s.h2, dh2) } else { k.geluErfBackward(dg2, s.h2, dh2) }
        let dg1 = ws.get(d + ".head.g1", [R, Hh], zero: true)
        k.linearBackward(dh2, s.g1, w.mlp2, dx: dg1, G.mlp2)
        let dh1 = ws.get(d + ".head.h1", [R, Hh])
        if tanhGELU { k.geluTanhBackward(dg1, s.h1, dh1) } else { k.geluErfBackward(dg1, s.h1, dh1) }
        let dx = ws.get(d + ".head.x", [R, cfg.hiddenSize], zero: true)
        k.linearBackward(dh1, s.x, w.mlp0, dx: dx, G.mlp0)
        try ctx.gradOut(Hd.mlp(pre, 0), "head Linear", dx)
        return dx
    }
}
