import SDDiTCore

// The SD-DiT decoder (SPEC §2.7-2.8; the reference's Decoder): decoder input H and
// decoder_layer, the decoder's adaLN-Zero blocks at width Dd, final_layer -> [N, T, p p C].
final class FastDecoder: FastParameterized {
    let layer = FastDecoderLayer()
    let blocks: [FastDiTBlock]
    let final = FastFinalLayer(branch: ActivationName.student)

    init(_ cfg: ModelConfig) {
        blocks = (0..<cfg.decoderDepth).map {
            FastDiTBlock(name: ActivationName.decBlock($0), key: "decoder_blocks.\($0).", heads: cfg.decoderNumHeads)
        }
    }

    func bind(_ P: TensorTable, gradients G: TensorTable?) {
        layer.bind(P, gradients: G); final.bind(P, gradients: G)
        for b in blocks { b.bind(P, gradients: G) }
    }

    func forward(_ ctx: FastContext, _ e: FastEncoder) throws -> FT {
        var z = try layer.forward(ctx, tokens: e.tokens, encOut: e.out, keep: e.keep, e.siluC)
        for b in blocks {
            z = try b.forward(ctx, z, e.siluC)
            ctx.remember(b.name, z)
        }
        return try final.forward(ctx, z, e.siluC)
    }

    /// From dout [N, T, p p C] and the head's gradient of the encoder output: the encoder
    /// output's full gradient and dtokens; adds into `dsiluC`.
    func backward(_ ctx: FastContext, dOut: FT, dEncHead: FT, dsiluC: FT) throws -> (dEnc: FT, dTokens: FT) {
        var dz = try final.backward(ctx, dOut: dOut, dsiluC: dsiluC)
        for b in blocks.reversed() {
            dz = try b.backward(ctx, dy: dz, dsiluC: dsiluC)
            if ctx.streamed { b.release(ctx) }   // the streamed step: done with this block
        }
        return try layer.backward(ctx, dz: dz, dEncHead: dEncHead, dsiluC: dsiluC)
    }
}
