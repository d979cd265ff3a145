/// The precision a run was made in, as a file declares it (root attribute or config key
/// `precision_mode`, SPEC §7 as extended in docs/DECISIONS.md 42) and as `oracle diff`
/// calibrates it: each mode is one of the fast path's.
public enum PrecisionMode: String, CaseIterable, Sendable, CustomStringConvertible {
    case float64
    case float32
    /// Every matmul and convolution with TF32 operands (torch.backends.cuda.matmul.allow_tf32).
    case tf32
    /// float32, but the patch embedding (a Conv2d) with TF32 operands: PyTorch's default on
    /// Ampere and later GPUs (torch.backends.cudnn.allow_tf32 = True, matmuls in float32).
    case tf32Conv = "tf32-conv"
    case fp16Autocast = "fp16-autocast"
    case bf16Autocast = "bf16-autocast"
    case fp16Pure = "fp16-pure"
    case bf16Pure = "bf16-pure"

    public var description: String { rawValue }

    /// Parses a declared mode; also accepts the fast backends' names ("fast-bf16", "fast-tf32")
    /// and "fp16" / "bf16" for autocast, as the backends name them.
    public init?(declared s: String) {
        let t = s.lowercased().trimmingCharacters(in: .whitespaces)
        let u = t.hasPrefix("fast-") ? String(t.dropFirst(5)) : t
        switch u {
        case "fast", "fp32", "float": self = .float32
        case "fp64", "double": self = .float64
        case "fp16", "float16": self = .fp16Autocast
        case "bf16", "bfloat16": self = .bf16Autocast
        default:
            guard let m = PrecisionMode(rawValue: u) else { return nil }
            self = m
        }
    }

    /// The valid spellings, for error messages.
    public static var validNames: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// What the mode means, in a phrase a reader recognizes.
    public var phrase: String {
        switch self {
        case .float64: return "float64"
        case .float32: return "float32"
        case .tf32: return "TF32 matmuls and convolutions (10-bit-mantissa operands)"
        case .tf32Conv: return "a TF32 patch-embedding convolution (cuDNN's default), float32 otherwise"
        case .fp16Autocast: return "fp16 autocast (fp16 matmul operands and outputs)"
        case .bf16Autocast: return "bf16 autocast (bfloat16 matmul operands and outputs)"
        case .fp16Pure: return "pure fp16 (every stored tensor in fp16)"
        case .bf16Pure: return "pure bf16 (every stored tensor in bfloat16)"
        }
    }

    /// The precision label of the mode's results: what its element-wise rule (the ceiling) is.
    public var label: Precision {
        switch self {
        case .float64: return .float64
        case .float32: return .float32
        case .tf32, .tf32Conv: return .tfloat32
        case .fp16Autocast, .fp16Pure: return .float16
        case .bf16Autocast, .bf16Pure: return .bfloat16
        }
    }

    /// The precision of the step's results in this mode: AdamW on the master parameters,
    /// the EMA and the centers run in float32 under autocast and TF32 (only the products are
    /// reduced), in the half type in the pure modes. The after-step rule's slack is this
    /// type's: the mode's `label` there (2^-11 for TF32) would pass an extra weight decay.
    public var stepLabel: Precision {
        switch self {
        case .float64: return .float64
        case .fp16Pure: return .float16
        case .bf16Pure: return .bfloat16
        default: return .float32
        }
    }

    /// The label a file's dataset `path` is judged at: `stepLabel` for the updated student and
    /// teacher (the after-step rule's own arithmetic), `label` for everything else (the
    /// centers blend the teacher's rows, products of the mode).
    public func resultLabel(_ path: String) -> Precision {
        path.hasPrefix("after_step/params/") || path.hasPrefix("after_step/teacher/") ? stepLabel : label
    }

    /// Whether a file in this mode stores its products as values of a half type (checkable
    /// from the values: every element exactly representable).
    public var storesHalf: Precision? {
        switch self {
        case .fp16Autocast, .fp16Pure: return .float16
        case .bf16Autocast, .bf16Pure: return .bfloat16
        default: return nil
        }
    }
}

extension Precision {
    /// Whether every value is exactly representable in this (narrower) precision, and at
    /// least one of them is not trivially so: it needs more significant bits than the next
    /// narrower type keeps (so all-zero or small-integer tensors are no evidence).
    public func holdsExactly(_ v: [Double]) -> Bool {
        guard !v.isEmpty else { return false }
        var nontrivial = false
        for x in v {
            guard x.isFinite else { return false }
            let r: Double
            switch self {
            case .float32, .tfloat32: r = Double(Float(x))
            case .bfloat16: r = Double(roundBF16(Float(x)))
            case .float16: r = Double(roundFP16(Float(x)))
            default: return false
            }
            guard r == x else { return false }
            if !nontrivial {
                // significant bits of x beyond bf16's 8 (float32 evidence) or beyond 4 (half evidence)
                let keep = self == .float32 || self == .tfloat32 ? 8 : 4
                let m = x.significand, scaled = m * Double(1 << keep)
                if x != 0, scaled != scaled.rounded() { nontrivial = true }
            }
        }
        return nontrivial
    }
}
