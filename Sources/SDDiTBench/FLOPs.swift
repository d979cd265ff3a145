import SDDiTCore

// FLOP counts of the benchmarked work (`oracle bench`): matrix products only (a multiply-add
// is 2 FLOPs); element-wise work (LayerNorm, softmax, GELU, AdamW, EMA, ...) is not counted.
// Backward of a matrix product = 2x its forward (input and weight gradients), except a first
// layer with no input gradient (patch embedding, t_embedder.mlp.0): 1x. Attention:
// q k^T and P v forward (2 products), dv, dP, dq, dk backward (4).

/// One component's FLOPs.
public struct FLOPComponent: Sendable {
    public var name: String
    public var forward: Double
    public var backward: Double
    public var total: Double { forward + backward }
    public init(_ name: String, forward: Double, backward: Double) {
        self.name = name; self.forward = forward; self.backward = backward
    }
}

public enum FLOPCount {
    /// Linears of one adaLN-Zero block over N x L tokens of width W (MLP hm), conditioning width cD:
    /// qkv, proj, fc1, fc2, adaLN_modulation.
    static func blockLinears(N: Int, L: Int, W: Int, hm: Int, cD: Int) -> Double {
        2 * Double(N * L) * Double(3 * W * W + W * W + 2 * W * hm) + 2 * Double(N) * Double(cD * 6 * W)
    }
    /// q k^T and P v of one block: 2 products of 2 N L L W FLOPs (summed over heads).
    static func blockAttention(N: Int, L: Int, W: Int) -> Double { 4 * Double(N) * Double(L) * Double(L) * Double(W) }

    /// Patch embedding and conditioning (t_embedder MLP); (first-layer part, rest).
    static func embedding(_ cfg: ModelConfig, N: Int) -> (first: Double, rest: Double) {
        let D = Double(cfg.hiddenSize)
        let patch = 2 * Double(N * cfg.tokens * cfg.patchDim) * D
        let t0 = 2 * Double(N) * 256 * D, t2 = 2 * Double(N) * D * D
        return (patch + t0, t2)
    }

    /// DINO head over R rows: three MLP linears and the weight-normalized last layer.
    static func head(_ cfg: ModelConfig, rows R: Int) -> Double {
        let D = cfg.hiddenSize, Hh = cfg.headHiddenDim, B = cfg.headBottleneckDim, K = cfg.headOutDim
        return 2 * Double(R) * Double(D * Hh + Hh * Hh + Hh * B + B * K)
    }

    /// Encoder over L tokens (depth blocks): (linears, attention).
    static func encoder(_ cfg: ModelConfig, N: Int, L: Int) -> (Double, Double) {
        let D = cfg.hiddenSize
        return (Double(cfg.depth) * blockLinears(N: N, L: L, W: D, hm: cfg.mlpHidden, cD: D),
                Double(cfg.depth) * blockAttention(N: N, L: L, W: D))
    }

    /// Decoder: (decoder_layer + final_layer, block linears, attention).
    static func decoder(_ cfg: ModelConfig, N: Int) -> (Double, Double, Double) {
        let D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize, T = cfg.tokens
        let layers = 2 * Double(N) * Double(D * 2 * D) + 2 * Double(N * T) * Double(D * Dd)
            + 2 * Double(N) * Double(D * 2 * Dd) + 2 * Double(N * T) * Double(Dd * cfg.patchDim)
        return (layers,
                Double(cfg.decoderDepth) * blockLinears(N: N, L: T, W: Dd, hm: cfg.decoderMlpHidden, cD: D),
                Double(cfg.decoderDepth) * blockAttention(N: N, L: T, W: Dd))
    }

    /// SD-DiT training step: student forward + backward (masked encoder over 1 + V tokens,
    /// decoder over T, head over N (1 + V) rows), teacher encoder over 1 + T tokens and head
    /// over N (1 + V) rows (forward only).
    public static func sdditTrain(_ cfg: ModelConfig, batch N: Int, maskRatio: Double) -> [FLOPComponent] {
        let V = cfg.visibleCount(maskRatio: maskRatio), T = cfg.tokens
        let emb = embedding(cfg, N: N)
        let (sl, sa) = encoder(cfg, N: N, L: 1 + V)
        let (dl, dbl, da) = decoder(cfg, N: N)
        let sh = head(cfg, rows: N * (1 + V))
        let (tl, ta) = encoder(cfg, N: N, L: 1 + T)
        return [
            FLOPComponent("student patch embed + conditioning", forward: emb.first + emb.rest, backward: emb.first + 2 * emb.rest),
            FLOPComponent("student encoder linears (qkv, proj, fc1, fc2, adaLN), L=\(1 + V)", forward: sl, backward: 2 * sl),
            FLOPComponent("student encoder attention (q k^T, P v), L=\(1 + V)", forward: sa, backward: 2 * sa),
            FLOPComponent("decoder_layer + final_layer", forward: dl, backward: 2 * dl),
            FLOPComponent("decoder block linears, L=\(T)", forward: dbl, backward: 2 * dbl),
            FLOPComponent("decoder attention, L=\(T)", forward: da, backward: 2 * da),
            FLOPComponent("student head (CLS + visible patches, \(N * (1 + V)) rows)", forward: sh, backward: 2 * sh),
            FLOPComponent("teacher patch embed + conditioning", forward: emb.first + emb.rest, backward: 0),
            FLOPComponent("teacher encoder linears, L=\(1 + T)", forward: tl, backward: 0),
            FLOPComponent("teacher encoder attention, L=\(1 + T)", forward: ta, backward: 0),
            FLOPComponent("teacher head (\(N * (1 + V)) rows)", forward: sh, backward: 0),
        ]
    }

    /// Plain DiT step: encoder blocks over all T tokens (no CLS), final layer, forward + backward.
    public static func ditTrain(_ cfg: ModelConfig, batch N: Int) -> [FLOPComponent] {
        let D = cfg.hiddenSize, T = cfg.tokens
        let emb = embedding(cfg, N: N)
        let (l, a) = encoder(cfg, N: N, L: T)
        let fin = 2 * Double(N) * Double(D * 2 * D) + 2 * Double(N * T) * Double(D * cfg.patchDim)
        return [
            FLOPComponent("patch embed + conditioning", forward: emb.first + emb.rest, backward: emb.first + 2 * emb.rest),
            FLOPComponent("block linears (qkv, proj, fc1, fc2, adaLN), L=\(T)", forward: l, backward: 2 * l),
            FLOPComponent("attention (q k^T, P v), L=\(T)", forward: a, backward: 2 * a),
            FLOPComponent("final_layer", forward: fin, backward: 2 * fin),
        ]
    }

    /// One denoiser evaluation D(x; sigma), every token visible (encoder over 1 + T, decoder).
    public static func denoise(_ cfg: ModelConfig, batch N: Int) -> [FLOPComponent] {
        let T = cfg.tokens
        let emb = embedding(cfg, N: N)
        let (l, a) = encoder(cfg, N: N, L: 1 + T)
        let (dl, dbl, da) = decoder(cfg, N: N)
        return [
            FLOPComponent("patch embed + conditioning", forward: emb.first + emb.rest, backward: 0),
            FLOPComponent("encoder linears, L=\(1 + T)", forward: l, backward: 0),
            FLOPComponent("encoder attention, L=\(1 + T)", forward: a, backward: 0),
            FLOPComponent("decoder_layer + final_layer", forward: dl, backward: 0),
            FLOPComponent("decoder block linears, L=\(T)", forward: dbl, backward: 0),
            FLOPComponent("decoder attention, L=\(T)", forward: da, backward: 0),
        ]
    }

    /// Denoiser evaluations of an N-step Heun sampler without guidance: 2 per step, 1 on
    /// the last (sigma_N = 0); doubled with classifier-free guidance.
    public static func heunEvaluations(steps: Int, guidance: Bool = false) -> Int {
        (2 * steps - 1) * (guidance ? 2 : 1)
    }
}
