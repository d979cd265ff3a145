// Parameter keys: PyTorch state_dict strings verbatim (SPEC §7), in one ordered list.
// /params, /teacher, /grads and /after_step all iterate this list.

public enum ModelPart: String, CaseIterable, Sendable {
    case encoder, decoder, head
}

public struct ParameterSpec: Equatable, Sendable {
    public let key: String
    public let shape: [Int]
    public let part: ModelPart
    /// Fixed tensors (`pos_embed`, `decoder_pos_embed`, `head.last_layer.weight_g`) are not trained.
    public let frozen: Bool
    public var count: Int { shape.reduce(1, *) }
    public init(key: String, shape: [Int], part: ModelPart, frozen: Bool) {
        self.key = key; self.shape = shape; self.part = part; self.frozen = frozen
    }
}

extension ModelConfig {
    public static let frozenKeys: Set<String> = ["pos_embed", "decoder_pos_embed", weightGKey]
    /// The weight norm's g of the head's last layer (fixed at 1, DINO's norm_last_layer).
    public static let weightGKey = "head.last_layer.weight_g"

    /// Student parameters (encoder + decoder + head) in forward order.
    public var studentParameters: [ParameterSpec] {
        let D = hiddenSize, Dd = decoderHiddenSize, C = inChannels, p = patchSize, T = tokens
        var out: [ParameterSpec] = []
        func add(_ k: String, _ s: [Int], _ part: ModelPart) {
            out.append(ParameterSpec(key: k, shape: s, part: part, frozen: Self.frozenKeys.contains(k)))
        }
        func blocks(_ prefix: String, _ n: Int, _ W: Int, _ hm: Int, _ part: ModelPart) {
            for i in 0..<n {
                let b = "\(prefix).\(i)."
                add(b + "attn.qkv.weight", [3 * W, W], part); add(b + "attn.qkv.bias", [3 * W], part)
                add(b + "attn.proj.weight", [W, W], part); add(b + "attn.proj.bias", [W], part)
                add(b + "mlp.fc1.weight", [hm, W], part); add(b + "mlp.fc1.bias", [hm], part)
                add(b + "mlp.fc2.weight", [W, hm], part); add(b + "mlp.fc2.bias", [W], part)
                add(b + "adaLN_modulation.1.weight", [6 * W, D], part)
                add(b + "adaLN_modulation.1.bias", [6 * W], part)
            }
        }
        add("x_embedder.proj.weight", [D, C, p, p], .encoder)
        add("x_embedder.proj.bias", [D], .encoder)
        add("pos_embed", [1, 1 + T, D], .encoder)
        add("cls_token", [1, 1, D], .encoder)
        add("t_embedder.mlp.0.weight", [D, 256], .encoder)
        add("t_embedder.mlp.0.bias", [D], .encoder)
        add("t_embedder.mlp.2.weight", [D, D], .encoder)
        add("t_embedder.mlp.2.bias", [D], .encoder)
        add("y_embedder.embedding_table.weight", [numClasses + 1, D], .encoder)
        blocks("blocks", depth, D, mlpHidden, .encoder)
        add("decoder_layer.adaLN_modulation.1.weight", [2 * D, D], .decoder)
        add("decoder_layer.adaLN_modulation.1.bias", [2 * D], .decoder)
        add("decoder_layer.linear.weight", [Dd, D], .decoder)
        add("decoder_layer.linear.bias", [Dd], .decoder)
        add("decoder_pos_embed", [1, T, Dd], .decoder)
        blocks("decoder_blocks", decoderDepth, Dd, decoderMlpHidden, .decoder)
        add("final_layer.adaLN_modulation.1.weight", [2 * Dd, D], .decoder)
        add("final_layer.adaLN_modulation.1.bias", [2 * Dd], .decoder)
        add("final_layer.linear.weight", [p * p * C, Dd], .decoder)
        add("final_layer.linear.bias", [p * p * C], .decoder)
        let Hh = headHiddenDim, B = headBottleneckDim, K = headOutDim
        add("head.mlp.0.weight", [Hh, D], .head); add("head.mlp.0.bias", [Hh], .head)
        add("head.mlp.2.weight", [Hh, Hh], .head); add("head.mlp.2.bias", [Hh], .head)
        add("head.mlp.4.weight", [B, Hh], .head); add("head.mlp.4.bias", [B], .head)
        add("head.last_layer.weight_g", [K, 1], .head)
        add("head.last_layer.weight_v", [K, B], .head)
        return out
    }

    /// Teacher parameters: the student's encoder and head keys (SPEC §7 /teacher).
    public var teacherParameters: [ParameterSpec] {
        studentParameters.filter { $0.part != .decoder }
    }

    /// Trainable student parameters: the /grads keys.
    public var trainableParameters: [ParameterSpec] {
        studentParameters.filter { !$0.frozen }
    }

    /// Parameter count by part: (encoder, decoder, head, total, trainable) of the student.
    public var parameterCounts: (encoder: Int, decoder: Int, head: Int, total: Int, trainable: Int) {
        var e = 0, d = 0, h = 0, tr = 0
        for s in studentParameters {
            switch s.part { case .encoder: e += s.count; case .decoder: d += s.count; case .head: h += s.count }
            if !s.frozen { tr += s.count }
        }
        return (e, d, h, e + d + h, tr)
    }
}
