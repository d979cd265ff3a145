import SDDiTCore

/// Deliberate deviations from SPEC that implementations get wrong, for building planted-bug
/// files with a known defect (tests of the calibrated verdicts). Encoder block i means the
/// student's and the teacher's `blocks.i` (the same code runs both).
public struct FastVariant: Sendable {
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
    public init(exactGELUBlock: Int? = nil, layerNormEpsBlock: Int? = nil, layerNormEps: Float = 1e-6, tf32PatchEmbedding: Bool = false,
                unscaledAttentionBlock: Int? = nil, shiftScaleSwapBlock: Int? = nil, swapTemperatures: Bool = false) {
        self.exactGELUBlock = exactGELUBlock; self.layerNormEpsBlock = layerNormEpsBlock; self.layerNormEps = layerNormEps
        self.tf32PatchEmbedding = tf32PatchEmbedding
        self.unscaledAttentionBlock = unscaledAttentionBlock; self.shiftScaleSwapBlock = shiftScaleSwapBlock
        self.swapTemperatures = swapTemperatures
    }
    /// Parses a planted bug as `oracle dump --plant` names it: gelu-exact:B, ln-eps:B[:EPS],
    /// no-sqrt-d:B, shift-scale:B, tau-swap, tf32-conv (B an encoder block).
    public init(planted s: String) throws {
        self.init()
        let parts = s.split(separator: ":").map(String.init)
        func block() throws -> Int {
            guard parts.count >= 2, let b = Int(parts[1]), b >= 0 else { throw ConfigError("--plant \(s): expected \(parts[0]):BLOCK") }
            return b
        }
        switch parts.first ?? "" {
        case "gelu-exact", "exact-gelu": exactGELUBlock = try block()
        case "ln-eps", "layernorm-eps":
            layerNormEpsBlock = try block()
            layerNormEps = parts.count > 2 ? (Float(parts[2]) ?? .nan) : 1e-5
            guard layerNormEps.isFinite, layerNormEps > 0 else { throw ConfigError("--plant \(s): eps must be a positive number") }
        case "no-sqrt-d": unscaledAttentionBlock = try block()
        case "shift-scale": shiftScaleSwapBlock = try block()
        case "tau-swap": swapTemperatures = true
        case "tf32-conv": tf32PatchEmbedding = true
        default: throw ConfigError("--plant \(s): unknown; expected gelu-exact:B, ln-eps:B[:EPS], no-sqrt-d:B, shift-scale:B, tau-swap or tf32-conv")
        }
    }
    func unscaledAttention(_ key: String) -> Bool { unscaledAttentionBlock.map { key == "blocks.\($0)." } ?? false }
    func swapsShiftScale(_ key: String) -> Bool { shiftScaleSwapBlock.map { key == "blocks.\($0)." } ?? false }
    /// Whether the block with parameter prefix `key` ("blocks.i.") uses exact GELU.
    func exactGELU(_ key: String) -> Bool { exactGELUBlock.map { key == "blocks.\($0)." } ?? false }
    /// The LayerNorm eps of the block with parameter prefix `key` (SPEC's 1e-6 but in the planted block).
    func layerNormEps(_ key: String) -> Float { layerNormEpsBlock.map { key == "blocks.\($0)." } == true ? layerNormEps : 1e-6 }
}
