import SDDiTCore

// The SD-DiT decoder (SPEC §2.7-2.8; the reference's Decoder): decoder input H and
// decoder_layer, the decoder's adaLN-Zero blocks at width Dd, final_layer -> [N, T, p p C].
final class FastDecoder {
    let layer = FastDecoderLayer()
    let blocks: [FastDiTBlock]
    let final = FastFinalLayer(branch: ActivationName.student)

    init(_ cfg: ModelConfig) {
        blocks = (0..<cfg.decoderDepth).map {
            FastDiTBlock(name: ActivationName.decBlock($0), key: "decoder_blocks.\($0).", heads: cfg.decoderNumHeads)
        }
    }

    func forward(_ m: FastModel, _ P: [String: FT], _ e: FastEncoder) throws -> FT {
        var z = try layer.forward(m, P, tokens: e.tokens, encOut: e.out, keep: e.keep, e.siluC)
        for b in blocks {
            z = try b.forward(m, P, z, e.siluC)
            m.remember(b.name, z)
        }
        return try final.forward(m, P, z, e.siluC)
    }

    /// From dout [N, T, p p C] and the head's gradient of the encoder output: the encoder
    /// output's full gradient and dtokens; adds into `dsiluC`.
    func backward(_ m: FastModel, _ P: [String: FT], _ G: [String: FT], dOut: FT, dEncHead: FT, dsiluC: FT) throws -> (dEnc: FT, dTokens: FT) {
        var dz = try final.backward(m, P, G, dOut: dOut, dsiluC: dsiluC)
        for b in blocks.reversed() {
            dz = try b.backward(m, P, G, dy: dz, dsiluC: dsiluC)
            if m.streamedTeacher != nil { b.release(m) }   // the streamed step: done with this block
        }
        return try layer.backward(m, P, G, dz: dz, dEncHead: dEncHead, dsiluC: dsiluC)
    }
}
