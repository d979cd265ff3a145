import SDDiTCore

/// The fast path's precision modes (issue: `fast`, `fast-fp16`, `fast-bf16`, plus `pure`).
public enum FastPrecision: String, CaseIterable, Sendable {
    /// Everything in float32.
    case fp32
    /// PyTorch autocast on GPUs: matmul operands rounded to fp16, float32 accumulation, output
    /// stored in fp16; LayerNorm, softmax, log-softmax, the loss and its weighting in float32.
    case fp16
    /// The same policy with bfloat16.
    case bf16
    /// Every stored tensor in fp16 (parameters, activations, gradients, loss weighting).
    case pureFP16
    /// Every stored tensor in bf16.
    case pureBF16
    /// TF32 on NVIDIA tensor cores (`torch.backends.cuda.matmul.allow_tf32`, cuDNN's default
    /// for convolutions): every matmul's operands rounded to a 10-bit mantissa (float32's
    /// exponent), float32 accumulation and storage; everything else float32.
    case tf32

    public var isHalf: Bool { self != .fp32 && self != .tf32 }
    public var isPure: Bool { self == .pureFP16 || self == .pureBF16 }
    public var isFP16: Bool { self == .fp16 || self == .pureFP16 }
    /// The precision label results carry (it selects comparison tolerances).
    public var label: Precision { self == .fp32 ? .float32 : self == .tf32 ? .tfloat32 : (isFP16 ? .float16 : .bfloat16) }
    public var halfMax: Float { isFP16 ? 65504 : Float.greatestFiniteMagnitude }
    /// Smallest normal number of the half type (below it: underflow to subnormals / zero).
    public var halfMinNormal: Float { isFP16 ? 6.103515625e-05 : Float.leastNormalMagnitude }
}

// roundFP16 / roundBF16 / roundTF32: SDDiTCore's HalfRounding.swift (the verdict reads values with them too).

extension FastPrecision {
    @inline(__always) func round(_ x: Float) -> Float {
        switch self {
        case .fp32, .tf32: return x
        case .fp16, .pureFP16: return roundFP16(x)
        case .bf16, .pureBF16: return roundBF16(x)
        }
    }
    /// Rounds `count` values in place to the half type (no-op in fp32).
    func round(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
        guard isHalf else { return }
        if isFP16 { for i in 0..<count { p[i] = roundFP16(p[i]) } } else { for i in 0..<count { p[i] = roundBF16(p[i]) } }
    }
}

/// PyTorch's GradScaler: initial scale 2^16, back-off 0.5, growth 2 after 2000 clean steps;
/// a step with a non-finite gradient is skipped.
public struct LossScaler: Sendable, CustomStringConvertible {
    public var scale: Float = 65536
    public var growthFactor: Float = 2
    public var backoffFactor: Float = 0.5
    public var growthInterval = 2000
    public var cleanSteps = 0
    public var skippedSteps = 0
    public var enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled; if !enabled { scale = 1 } }

    /// Records the outcome of one step; returns whether the optimizer may step.
    public mutating func update(foundNonFinite: Bool) -> Bool {
        guard enabled else { return !foundNonFinite }
        if foundNonFinite {
            scale *= backoffFactor; cleanSteps = 0; skippedSteps += 1
            return false
        }
        cleanSteps += 1
        if cleanSteps == growthInterval { scale *= growthFactor; cleanSteps = 0 }
        return true
    }
    public var description: String { "loss scale \(scale), clean steps \(cleanSteps), skipped \(skippedSteps)" }
}
