import SDDiTCore

/// Deliberate deviations from SPEC that implementations get wrong: planted-bug files with a
/// known defect (the tests of the calibrated verdicts), and the divergences `oracle diff
/// --explain` reruns to name a failure's cause (SDDiTDiff's `Divergences`). Encoder block i
/// means the student's and the teacher's `blocks.i` (the same code runs both); `everyBlock`
/// puts a block deviation in every DiT block (encoder and decoder, student and teacher).
public struct FastVariant: Sendable, Equatable {
    /// Exact (erf) GELU instead of the tanh approximation in encoder block i's MLP.
    public var exactGELUBlock: Int? = nil
    /// LayerNorm eps `layerNormEps` instead of 1e-6 in encoder block i's two norms.
    public var layerNormEpsBlock: Int? = nil
    public var layerNormEps: Float = 1e-6
    /// The patch embedding (a Conv2d in PyTorch) with TF32 operands, forward and backward, in
    /// an otherwise float32 run: PyTorch's default on Ampere and later GPUs
    /// (`torch.backends.cudnn.allow_tf32 = True`).
    public var tf32PatchEmbedding = false
    /// Attention logits q k^T without the 1/sqrt(head_dim) in encoder block i (forward and backward).
    public var unscaledAttentionBlock: Int? = nil
    /// modulate(x, scale, shift) for modulate(x, shift, scale) in encoder block i's two norms.
    public var shiftScaleSwapBlock: Int? = nil
    /// The DINO temperatures swapped: tau_S for the teacher, tau_T for the student.
    public var swapTemperatures = false

    /// A block deviation of the fields above.
    public enum BlockDeviation: String, Sendable, CaseIterable { case exactGELU, layerNormEps, unscaledAttention, shiftScaleSwap }
    /// Block deviations in every DiT block (`.layerNormEps`: eps `layerNormEps`).
    public var everyBlock: Set<BlockDeviation> = []
    /// c_noise = ln(sigma) for EDM's ln(sigma)/4 (student and teacher).
    public var cNoiseLn = false
    /// The timestep frequency embedding as [sin, cos] for DiT's [cos, sin].
    public var timestepSinFirst = false
    /// Decoder input: a zero mask token (MaskDiT's, zero-initialised) at hidden positions for
    /// SPEC's embedded noised tokens (no gradient reaches the patch embedding through them).
    public var maskToken = false
    /// The mask token's values [D] (nil: zeros), as fitted from a file's decoder input.
    public var maskTokenValues: [Float]? = nil
    /// `.layerNormEps` in `everyBlock` reaches the decoder layer's and the final layer's norms too.
    public var layerNormEpsLayers = false
    /// Which of a block's two norms (1: before attention, 2: before the MLP) a block
    /// `layerNormEps` reaches (nil: both, as one LayerNorm class would).
    public var layerNormEpsNorm: Int? = nil
    /// The projection head's GELUs with the tanh approximation for DINO's exact GELU.
    public var headGELUTanh = false
    /// Unpatchify reading each token vector in (c, i, j) order for (i, j, c).
    public var unpatchifyCIJ = false
    /// The teacher's view x_T = x0 (no sigma_T n_T), preconditioned at sigma_T all the same.
    public var teacherClean = false
    /// The generative loss without EDM's weight lambda(sigma): mean (D - x0)^2.
    public var edmUnweighted = false
    /// The teacher's softmax without the centers.
    public var noCentering = false
    /// The centers updated first, and the DINO losses computed with the updated centers.
    public var centersBeforeLoss = false
    /// The EMA teacher blended with the student before the AdamW step.
    public var emaBeforeStep = false
    /// The EMA reversed: teacher <- (1 - beta) teacher + beta student.
    public var emaReversed = false
    /// Adam's moments without bias correction.
    public var adamNoBiasCorrection = false
    /// Parameters whose key starts with this are not trained (no AdamW step).
    public var frozenPrefix: String? = nil
    /// `head.last_layer.weight_g` trained (a gradient and the AdamW step) where SPEC fixes it at 1.
    public var weightGTrained = false

    public init(exactGELUBlock: Int? = nil, layerNormEpsBlock: Int? = nil, layerNormEps: Float = 1e-6, tf32PatchEmbedding: Bool = false,
                unscaledAttentionBlock: Int? = nil, shiftScaleSwapBlock: Int? = nil, swapTemperatures: Bool = false) {
        self.exactGELUBlock = exactGELUBlock; self.layerNormEpsBlock = layerNormEpsBlock; self.layerNormEps = layerNormEps
        self.tf32PatchEmbedding = tf32PatchEmbedding
        self.unscaledAttentionBlock = unscaledAttentionBlock; self.shiftScaleSwapBlock = shiftScaleSwapBlock
        self.swapTemperatures = swapTemperatures
    }

    /// The names `--plant` takes (B: an encoder block, or `all` for every block).
    public static let plantedNames = "gelu-exact:B, ln-eps:B[:norm1|norm2][:EPS], no-sqrt-d:B, shift-scale:B (B a block, all, or for ln-eps blocks: the DiT blocks without the decoder and final layers), tau-swap, tf32-conv, "
        + "c-noise-ln, temb-sin-first, mask-token, head-gelu-tanh, unpatchify-cij, teacher-clean, edm-no-weight, no-centering, "
        + "center-before-loss, ema-before-step, ema-reversed, no-bias-correction, weight-g-trained, frozen:PREFIX"

    /// Parses planted bugs as `oracle dump --plant` names them, joined by `+` (`plantedNames`).
    public init(planted s: String) throws {
        self.init()
        for one in s.split(separator: "+") { try add(String(one)) }
    }

    private mutating func add(_ s: String) throws {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func block(_ d: BlockDeviation) throws -> Int? {
            if parts.count >= 2, parts[1] == "all" || parts[1] == "blocks" {
                everyBlock.insert(d)
                if d == .layerNormEps && parts[1] == "all" { layerNormEpsLayers = true }   // every LayerNorm
                return nil
            }
            guard parts.count >= 2, let b = Int(parts[1]), b >= 0 else { throw ConfigError("--plant \(s): expected \(parts[0]):BLOCK or \(parts[0]):all") }
            return b
        }
        switch parts.first ?? "" {
        case "gelu-exact", "exact-gelu": exactGELUBlock = try block(.exactGELU) ?? exactGELUBlock
        case "ln-eps", "layernorm-eps":
            layerNormEpsBlock = try block(.layerNormEps) ?? layerNormEpsBlock
            var rest = parts.count > 2 ? parts[2] : "1e-5"
            if rest == "norm1" || rest == "norm2" {   // ln-eps:B:normK[:EPS]
                layerNormEpsNorm = rest == "norm1" ? 1 : 2
                rest = parts.count > 3 ? parts[3] : "1e-5"
            }
            layerNormEps = Float(rest) ?? .nan
            guard layerNormEps.isFinite, layerNormEps > 0 else { throw ConfigError("--plant \(s): eps must be a positive number") }
        case "no-sqrt-d": unscaledAttentionBlock = try block(.unscaledAttention) ?? unscaledAttentionBlock
        case "shift-scale": shiftScaleSwapBlock = try block(.shiftScaleSwap) ?? shiftScaleSwapBlock
        case "tau-swap": swapTemperatures = true
        case "tf32-conv": tf32PatchEmbedding = true
        case "c-noise-ln": cNoiseLn = true
        case "temb-sin-first": timestepSinFirst = true
        case "mask-token": maskToken = true
        case "head-gelu-tanh": headGELUTanh = true
        case "unpatchify-cij": unpatchifyCIJ = true
        case "teacher-clean": teacherClean = true
        case "edm-no-weight": edmUnweighted = true
        case "no-centering": noCentering = true
        case "center-before-loss": centersBeforeLoss = true
        case "ema-before-step": emaBeforeStep = true
        case "ema-reversed": emaReversed = true
        case "no-bias-correction": adamNoBiasCorrection = true
        case "weight-g-trained": weightGTrained = true
        case "frozen":
            guard parts.count == 2, !parts[1].isEmpty else { throw ConfigError("--plant \(s): expected frozen:PREFIX (a parameter key prefix)") }
            frozenPrefix = parts[1]
        default: throw ConfigError("--plant \(s): unknown; expected one of \(Self.plantedNames), joined by +")
        }
    }

    private func inBlock(_ d: BlockDeviation, _ b: Int?, _ key: String) -> Bool {
        everyBlock.contains(d) || (b.map { key == "blocks.\($0)." } ?? false)
    }
    func unscaledAttention(_ key: String) -> Bool { inBlock(.unscaledAttention, unscaledAttentionBlock, key) }
    func swapsShiftScale(_ key: String) -> Bool { inBlock(.shiftScaleSwap, shiftScaleSwapBlock, key) }
    /// Whether the block with parameter prefix `key` ("blocks.i.") uses exact GELU.
    func exactGELU(_ key: String) -> Bool { inBlock(.exactGELU, exactGELUBlock, key) }
    /// The LayerNorm eps of the block (or decoder / final layer) with parameter prefix `key`:
    /// SPEC's 1e-6 but where planted.
    func layerNormEps(_ key: String, norm: Int? = nil) -> Float {
        let layer = key == "decoder_layer." || key == "final_layer."
        let here = layer ? layerNormEpsLayers : inBlock(.layerNormEps, layerNormEpsBlock, key) && (layerNormEpsNorm.map { $0 == norm } ?? true)
        return here ? layerNormEps : 1e-6
    }
    /// EDM's c_noise(sigma) = ln(sigma)/4, or ln(sigma) under `cNoiseLn`.
    func cNoise(_ e: EDMCoefficients<Double>) -> Double { cNoiseLn ? 4 * e.cNoise : e.cNoise }
    /// Whether the parameter `key` takes AdamW's step.
    func trains(_ key: String) -> Bool { frozenPrefix.map { !key.hasPrefix($0) } ?? true }
}

extension FastVariant {
    /// This variant with `o`'s deviations added (a composition of divergences).
    public func merged(with o: FastVariant) -> FastVariant {
        var v = self
        v.exactGELUBlock = v.exactGELUBlock ?? o.exactGELUBlock
        if o.layerNormEpsBlock != nil || o.everyBlock.contains(.layerNormEps) { v.layerNormEps = o.layerNormEps }
        v.layerNormEpsBlock = v.layerNormEpsBlock ?? o.layerNormEpsBlock
        v.unscaledAttentionBlock = v.unscaledAttentionBlock ?? o.unscaledAttentionBlock
        v.shiftScaleSwapBlock = v.shiftScaleSwapBlock ?? o.shiftScaleSwapBlock
        v.everyBlock.formUnion(o.everyBlock)
        v.frozenPrefix = v.frozenPrefix ?? o.frozenPrefix
        v.maskTokenValues = v.maskTokenValues ?? o.maskTokenValues
        v.layerNormEpsLayers = v.layerNormEpsLayers || o.layerNormEpsLayers
        v.layerNormEpsNorm = v.layerNormEpsNorm ?? o.layerNormEpsNorm
        for k in [\FastVariant.tf32PatchEmbedding, \.swapTemperatures, \.cNoiseLn, \.timestepSinFirst, \.maskToken, \.headGELUTanh,
                  \.unpatchifyCIJ, \.teacherClean, \.edmUnweighted, \.noCentering, \.centersBeforeLoss, \.emaBeforeStep,
                  \.emaReversed, \.adamNoBiasCorrection, \.weightGTrained] as [WritableKeyPath<FastVariant, Bool>] where o[keyPath: k] {
            v[keyPath: k] = true
        }
        return v
    }
}
