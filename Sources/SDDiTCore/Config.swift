import Foundation

/// The model and training hyper-parameters of SPEC §1, §3-§6, with the JSON keys of
/// SPEC §7 (the root attribute `config` of an exchange file).
public struct ModelConfig: Equatable, Sendable {
    public var name: String = "custom"
    // Network (SPEC §1-2)
    public var inputSize: Int
    public var inChannels: Int = 4
    public var patchSize: Int = 2
    public var hiddenSize: Int
    public var depth: Int
    public var numHeads: Int
    public var mlpRatio: Double = 4
    public var decoderHiddenSize: Int
    public var decoderDepth: Int
    public var decoderNumHeads: Int
    public var numClasses: Int
    public var headHiddenDim: Int
    public var headBottleneckDim: Int
    public var headOutDim: Int
    // EDM (SPEC §3, §6)
    public var sigmaData: Double = 0.5
    public var sigmaMin: Double = 0.002
    public var sigmaMax: Double = 80
    public var pMean: Double = -1.2
    public var pStd: Double = 1.2
    public var rho: Double = 7
    /// The teacher's fixed noise level sigma_T (SPEC §3: sigma_min).
    public var sigmaT: Double? = nil
    // Losses and one training step (SPEC §4-5)
    public var tauS: Double = 0.1
    public var tauT: Double = 0.09
    public var centerMomentum: Double = 0.9
    public var emaBeta: Double = 0.996
    public var lr: Double = 1e-4
    public var adamBeta1: Double = 0.9
    public var adamBeta2: Double = 0.999
    public var adamEps: Double = 1e-8
    public var weightDecay: Double = 0
    public var maskRatio: Double = 0.2
    public var cfgScale: Double? = nil

    public init(name: String = "custom", inputSize: Int, inChannels: Int = 4, patchSize: Int = 2,
                hiddenSize: Int, depth: Int, numHeads: Int, mlpRatio: Double = 4,
                decoderHiddenSize: Int, decoderDepth: Int, decoderNumHeads: Int,
                numClasses: Int, headHiddenDim: Int, headBottleneckDim: Int, headOutDim: Int) {
        self.name = name
        self.inputSize = inputSize; self.inChannels = inChannels; self.patchSize = patchSize
        self.hiddenSize = hiddenSize; self.depth = depth; self.numHeads = numHeads
        self.mlpRatio = mlpRatio
        self.decoderHiddenSize = decoderHiddenSize; self.decoderDepth = decoderDepth
        self.decoderNumHeads = decoderNumHeads; self.numClasses = numClasses
        self.headHiddenDim = headHiddenDim; self.headBottleneckDim = headBottleneckDim
        self.headOutDim = headOutDim
    }

    // Derived sizes (SPEC notation).
    public var grid: Int { inputSize / patchSize }
    /// T = (H/p)(W/p)
    public var tokens: Int { grid * grid }
    public var patchDim: Int { inChannels * patchSize * patchSize }
    public var mlpHidden: Int { Int(Double(hiddenSize) * mlpRatio) }
    public var decoderMlpHidden: Int { Int(Double(decoderHiddenSize) * mlpRatio) }
    public var teacherSigma: Double { sigmaT ?? sigmaMin }
    /// V = int(T (1 - ratio)) (MaskDiT's len_keep).
    public func visibleCount(maskRatio r: Double) -> Int { Int(Double(tokens) * (1 - r)) }
}

// MARK: - Presets (SPEC §1)

extension ModelConfig {
    static func sddit(_ name: String, _ D: Int, _ depth: Int, _ heads: Int) -> ModelConfig {
        ModelConfig(name: name, inputSize: 32, hiddenSize: D, depth: depth, numHeads: heads,
                    decoderHiddenSize: 512, decoderDepth: 8, decoderNumHeads: 16,
                    numClasses: 1000, headHiddenDim: 2048, headBottleneckDim: 256, headOutDim: 8192)
    }
    public static let tiny = ModelConfig(
        name: "tiny", inputSize: 8, hiddenSize: 32, depth: 2, numHeads: 4,
        decoderHiddenSize: 32, decoderDepth: 2, decoderNumHeads: 4, numClasses: 10,
        headHiddenDim: 64, headBottleneckDim: 16, headOutDim: 64)
    public static let s2 = sddit("S/2", 384, 12, 6)
    public static let b2 = sddit("B/2", 768, 12, 12)
    public static let xl2 = sddit("XL/2", 1152, 28, 16)
    public static let presets: [ModelConfig] = [.tiny, .s2, .b2, .xl2]

    /// `tiny`, `S/2`, `B/2`, `XL/2`, also with an `SD-DiT-` prefix (case-insensitive).
    public static func named(_ raw: String) -> ModelConfig? {
        var s = raw.trimmingCharacters(in: .whitespaces)
        if s.lowercased().hasPrefix("sd-dit-") { s = String(s.dropFirst(7)) }
        return presets.first { $0.name.lowercased() == s.lowercased() }
    }
}

// MARK: - Validation

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ d: String) { description = d }
}

extension ModelConfig {
    /// Throws one line naming the first inconsistent field.
    public func validate() throws {
        func need(_ ok: Bool, _ msg: @autoclosure () -> String) throws {
            if !ok { throw ConfigError("config: " + msg()) }
        }
        for (k, v) in [("input_size", inputSize), ("in_channels", inChannels), ("patch_size", patchSize),
                       ("hidden_size", hiddenSize), ("depth", depth), ("num_heads", numHeads),
                       ("decoder_hidden_size", decoderHiddenSize), ("decoder_depth", decoderDepth),
                       ("decoder_num_heads", decoderNumHeads), ("num_classes", numClasses),
                       ("head_hidden_dim", headHiddenDim), ("head_bottleneck_dim", headBottleneckDim),
                       ("head_out_dim", headOutDim)] {
            try need(v > 0, "\(k) must be positive, found \(v)")
        }
        try need(inputSize % patchSize == 0,
                 "input_size \(inputSize) is not divisible by patch_size \(patchSize)")
        try need(hiddenSize % numHeads == 0,
                 "num_heads \(numHeads) does not divide hidden_size \(hiddenSize)")
        try need(decoderHiddenSize % decoderNumHeads == 0,
                 "decoder_num_heads \(decoderNumHeads) does not divide decoder_hidden_size \(decoderHiddenSize)")
        try need(hiddenSize % 4 == 0,
                 "hidden_size \(hiddenSize) must be a multiple of 4 for the 2-D sin-cos embedding")
        try need(decoderHiddenSize % 4 == 0,
                 "decoder_hidden_size \(decoderHiddenSize) must be a multiple of 4 for the 2-D sin-cos embedding")
        try need(mlpRatio > 0 && mlpRatio <= 64 && mlpHidden > 0, "mlp_ratio \(mlpRatio) must lie in (0, 64] and give a non-empty MLP")
        for (k, v) in [("input_size", inputSize), ("hidden_size", hiddenSize), ("decoder_hidden_size", decoderHiddenSize),
                       ("head_hidden_dim", headHiddenDim), ("head_out_dim", headOutDim), ("num_classes", numClasses),
                       ("depth", depth), ("decoder_depth", decoderDepth), ("in_channels", inChannels)] {
            try need(v <= 1 << 20, "\(k) = \(v) is absurdly large (limit 2^20)")
        }
        for (k, v) in [("sigma_data", sigmaData), ("sigma_min", sigmaMin), ("sigma_max", sigmaMax),
                       ("tau_s", tauS), ("tau_t", tauT), ("rho", rho)] {
            try need(v > 0 && v.isFinite, "\(k) must be positive and finite, found \(v)")
        }
        try need(sigmaMax > sigmaMin, "sigma_max \(sigmaMax) must exceed sigma_min \(sigmaMin)")
        try need(teacherSigma > 0 && teacherSigma.isFinite, "sigma_t must be positive, found \(teacherSigma)")
        try need(maskRatio >= 0 && maskRatio < 1, "mask_ratio must lie in [0, 1), found \(maskRatio)")
        try need(visibleCount(maskRatio: maskRatio) >= 1, "mask_ratio \(maskRatio) leaves no visible token")
        try need(lr >= 0 && lr.isFinite, "lr must be non-negative, found \(lr)")
        for (k, v) in [("ema_beta", emaBeta), ("center_momentum", centerMomentum),
                       ("adam_beta1", adamBeta1), ("adam_beta2", adamBeta2)] {
            try need(v >= 0 && v <= 1, "\(k) must lie in [0, 1], found \(v)")
        }
        try need(adamEps > 0, "adam_eps must be positive, found \(adamEps)")
    }
}

// MARK: - Memory (checked before anything is allocated)

extension ModelConfig {
    /// Values kept for backward per sample, roughly: about 40 tensors of [tokens, width] per
    /// block and the attention maps, for the student's and teacher's encoders, the decoder
    /// and the head.
    func activationValues(batch N: Int) -> Double {
        let T = Double(tokens + 1)
        let enc = Double(depth) * (40 * T * Double(hiddenSize) + 2 * Double(numHeads) * T * T)
        let dec = Double(decoderDepth) * (40 * T * Double(decoderHiddenSize) + 2 * Double(decoderNumHeads) * T * T)
        let head = 2 * T * (4 * Double(headHiddenDim) + 3 * Double(headOutDim))
        return Double(N) * (2 * enc + dec + head)
    }

    /// Bytes one float64 training step of the reference needs, roughly: student, teacher,
    /// gradients and Adam moments (5 copies of the parameters) plus the activations.
    public func estimatedStepBytes(batch N: Int) -> Double {
        8 * (5 * Double(parameterCounts.total) + activationValues(batch: N))
    }

    /// Values one DiT block keeps for its backward at width W over L tokens (`DiTBlock.Cache`):
    /// x, LN1, modulate, attention out, proj, x1, LN2, modulate, fc2 (9 W), qkv (3 W), fc1 and
    /// GELU (2 mlp), the attention probabilities (heads L^2), LayerNorm's mean and rstd, the
    /// six modulation chunks.
    func blockCacheValues(width W: Int, mlp M: Int, heads H: Int, tokens L: Int) -> Double {
        let l = Double(L)
        return l * Double(12 * W + 2 * M) + Double(H) * l * l + 4 * l + Double(6 * W)
    }

    /// Bytes of the reference's one-step run as `ReferenceBackend.stream` makes it, at batch N
    /// with V visible tokens and `scalarBytes` per value (8 Double, 16 Float80), roughly: the
    /// setup's student and teacher in Double (shared with a Double run, converted otherwise),
    /// the gradients still accumulating (each part's is stepped and dropped once its backward is
    /// done), what the student's encoder, decoder and head keep for backward (the
    /// teacher keeps none: it has no backward), the recorded activations, one block's backward
    /// temporaries, and a few tensors of the largest parameter (the step's and the EMA's).
    public func estimatedReferenceStepBytes(batch N: Int, visible V: Int, scalarBytes b: Double) -> Double {
        let c = parameterCounts, teacher = Double(c.encoder + c.head), T = tokens, n = Double(N)
        let setup = 8 * (Double(c.total) + teacher), converted = b == 8 ? 0 : b * (Double(c.total) + teacher)
        // gradients: those accumulating to the end (embedders, CLS) and one part's at a time
        func part(_ k: String) -> String? {
            for pre in ["blocks.", "decoder_blocks."] where k.hasPrefix(pre) {
                return pre + (k.dropFirst(pre.count).split(separator: ".").first.map(String.init) ?? "")
            }
            return ["head.", "final_layer.", "decoder_layer."].first { k.hasPrefix($0) }
        }
        var parts: [String: Int] = [:], shared = 0
        for s in studentParameters where !s.frozen {
            if let p = part(s.key) { parts[p, default: 0] += s.count } else { shared += s.count }
        }
        let grads = b * Double(shared + (parts.values.max() ?? 0))
        let encBlock = blockCacheValues(width: hiddenSize, mlp: mlpHidden, heads: numHeads, tokens: 1 + V)
        let decBlock = blockCacheValues(width: decoderHiddenSize, mlp: decoderMlpHidden, heads: decoderNumHeads, tokens: T)
        let head = Double(1 + V) * Double(hiddenSize + 4 * headHiddenDim + 2 * headBottleneckDim + 2 * headOutDim)
        let decoderRest = Double(T) * Double(4 * hiddenSize + 4 * decoderHiddenSize + 3 * patchDim)
        let recorded = Double(depth * (1 + T) * hiddenSize) + 2 * Double(1 + T) * Double(headOutDim)   // the teacher's
        let saved = n * (Double(depth) * encBlock + Double(decoderDepth) * decBlock + head + decoderRest + recorded)
        let transient = n * 2 * max(encBlock, decBlock)
        let largest = Double(studentParameters.map(\.count).max() ?? 0)
        return setup + converted + grads + b * (saved + transient + 4 * largest)
    }

    /// Bytes of the headroom sweep's forward-and-backward-only fast model, roughly: student,
    /// teacher and gradients in float32 (no AdamW moments, no Double copy), float32
    /// activations, and one Double tensor at a time while loading.
    public func estimatedHeadroomSweepBytes(batch N: Int) -> Double {
        let counts = parameterCounts
        let largest = Double(studentParameters.map(\.count).max() ?? 0)
        return 4 * (2 * Double(counts.total) + Double(counts.encoder + counts.head) + activationValues(batch: N)) + 24 * largest
    }

    /// Throws when a step would need more memory than the machine has (said before allocating).
    public func checkMemory(batch: Int, available: Double) throws {
        try checkMemory(need: estimatedStepBytes(batch: batch), what: String(format: "a training step at batch %d", batch), available: available)
    }

    /// Throws when `need` bytes (for `what`) exceed 80% of `available`.
    public func checkMemory(need: Double, what: String, available: Double) throws {
        if need > 0.8 * available || !need.isFinite {
            throw ConfigError(String(format: "config: %@ needs about %.1f GiB (%d parameters), more than this machine's %.1f GiB; refusing before allocating",
                                     what, need / 1073741824, parameterCounts.total, available / 1073741824))
        }
    }
}

// MARK: - JSON (SPEC §7 keys)

extension ModelConfig {
    public var jsonObject: [String: Any] {
        var o: [String: Any] = [
            "config_name": name, "input_size": inputSize, "in_channels": inChannels,
            "patch_size": patchSize, "hidden_size": hiddenSize, "depth": depth,
            "num_heads": numHeads, "mlp_ratio": mlpRatio,
            "decoder_hidden_size": decoderHiddenSize, "decoder_depth": decoderDepth,
            "decoder_num_heads": decoderNumHeads, "num_classes": numClasses,
            "head_hidden_dim": headHiddenDim, "head_bottleneck_dim": headBottleneckDim,
            "head_out_dim": headOutDim, "sigma_data": sigmaData, "sigma_min": sigmaMin,
            "sigma_max": sigmaMax, "p_mean": pMean, "p_std": pStd, "rho": rho,
            "sigma_t": teacherSigma, "tau_s": tauS, "tau_t": tauT,
            "center_momentum": centerMomentum, "ema_beta": emaBeta, "lr": lr,
            "adam_beta1": adamBeta1, "adam_beta2": adamBeta2, "adam_eps": adamEps,
            "weight_decay": weightDecay, "mask_ratio": maskRatio,
        ]
        if let c = cfgScale { o["cfg_scale"] = c }
        return o
    }

    public func jsonString(extra: [String: Any] = [:]) -> String {
        let o = jsonObject.merging(extra) { _, new in new }
        guard let d = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]),
              let s = String(data: d, encoding: .utf8) else { return "{}" }
        return s
    }

    /// The keys with a default (`init(json:)` takes SPEC's value when they are absent) that
    /// `json` leaves out: a report that relies on them says so (never silently).
    public static func defaultedKeys(json: String) -> [String] {
        guard let data = json.data(using: .utf8),
              case .object(let o)? = try? JSONDecoder().decode(JSONValue.self, from: data) else { return [] }
        return optionalKeys.filter { o[$0] == nil || o[$0] == .null }
    }
    /// Keys `init(json:)` fills with a default when absent (cfg_scale and sigma_t mean "none").
    public static let optionalKeys = ["lr", "adam_beta1", "adam_beta2", "adam_eps", "weight_decay", "mask_ratio", "rho"]

    /// The value a config takes for one of `optionalKeys`.
    public func value(ofOptionalKey k: String) -> Double? {
        switch k {
        case "lr": return lr
        case "adam_beta1": return adamBeta1
        case "adam_beta2": return adamBeta2
        case "adam_eps": return adamEps
        case "weight_decay": return weightDecay
        case "mask_ratio": return maskRatio
        case "rho": return rho
        default: return nil
        }
    }

    /// Parses the config JSON; a missing or mistyped required key is one clear error.
    public init(json: String) throws {
        guard let data = json.data(using: .utf8),
              case .object(let o)? = try? JSONDecoder().decode(JSONValue.self, from: data) else {
            throw ConfigError("config: not a JSON object: \(json.prefix(60))")
        }
        func dbl(_ k: String) throws -> Double {
            guard let v = o[k] else { throw ConfigError("config: missing key '\(k)'") }
            guard case .number(let d) = v else { throw ConfigError("config: key '\(k)' must be a number, found \(v)") }
            return d
        }
        func int(_ k: String) throws -> Int {
            let d = try dbl(k)
            guard d == d.rounded(), abs(d) < 1e15 else { throw ConfigError("config: key '\(k)' must be an integer, found \(d)") }
            return Int(d)
        }
        func optDbl(_ k: String) throws -> Double? {
            if o[k] == nil || o[k] == .null { return nil }
            return try dbl(k)
        }
        var configName = "custom"
        if case .string(let s)? = o["config_name"] { configName = s }

        self.init(name: configName,
                  inputSize: try int("input_size"), inChannels: try int("in_channels"),
                  patchSize: try int("patch_size"), hiddenSize: try int("hidden_size"),
                  depth: try int("depth"), numHeads: try int("num_heads"), mlpRatio: try dbl("mlp_ratio"),
                  decoderHiddenSize: try int("decoder_hidden_size"), decoderDepth: try int("decoder_depth"),
                  decoderNumHeads: try int("decoder_num_heads"), numClasses: try int("num_classes"),
                  headHiddenDim: try int("head_hidden_dim"), headBottleneckDim: try int("head_bottleneck_dim"),
                  headOutDim: try int("head_out_dim"))
        sigmaData = try dbl("sigma_data"); sigmaMin = try dbl("sigma_min"); sigmaMax = try dbl("sigma_max")
        pMean = try dbl("p_mean"); pStd = try dbl("p_std")
        tauS = try dbl("tau_s"); tauT = try dbl("tau_t")
        centerMomentum = try dbl("center_momentum"); emaBeta = try dbl("ema_beta")
        rho = try optDbl("rho") ?? rho
        sigmaT = try optDbl("sigma_t")
        lr = try optDbl("lr") ?? lr
        adamBeta1 = try optDbl("adam_beta1") ?? adamBeta1
        adamBeta2 = try optDbl("adam_beta2") ?? adamBeta2
        adamEps = try optDbl("adam_eps") ?? adamEps
        weightDecay = try optDbl("weight_decay") ?? weightDecay
        maskRatio = try optDbl("mask_ratio") ?? maskRatio
        cfgScale = try optDbl("cfg_scale")
        try validate()
    }
}

/// A JSON value that keeps numbers and booleans apart (Foundation's NSNumber does not on Linux).
public enum JSONValue: Decodable, Equatable, CustomStringConvertible {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .number(let d): return "\(d)"
        case .string(let s): return "\"\(s)\""
        case .array(let a): return "[\(a.count) items]"
        case .object: return "{...}"
        }
    }
}
