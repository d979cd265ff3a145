// A run: the SPEC §7 datasets of one side of a comparison, by path ("activations/student.D",
// "grads/blocks.0.attn.qkv.weight", "sampler/x.3", ...), whether read from a file or computed
// by a backend. Values are held as Double whatever their stored precision.

/// The precision a tensor was computed or stored in; it sets comparison tolerances.
public enum Precision: String, Sendable, Comparable, CaseIterable {
    case float16, bfloat16, float32, float64, float80, integer
    /// TF32 (NVIDIA tensor cores): float32 storage, matmul operands with a 10-bit mantissa.
    case tfloat32

    /// Unit roundoff (half the machine epsilon).
    public var unitRoundoff: Double {
        switch self {
        case .float16, .tfloat32: return 0x1p-11
        case .bfloat16: return 0x1p-8
        case .float32: return 0x1p-24
        case .float64: return 0x1p-53
        case .float80: return 0x1p-64
        case .integer: return 0
        }
    }
    private var rank: Int {
        switch self { case .bfloat16: 0; case .float16: 1; case .tfloat32: 2; case .float32: 3; case .float64: 4; case .float80: 5; case .integer: 6 }
    }
    public static func < (a: Precision, b: Precision) -> Bool { a.rank < b.rank }
}

public struct NamedTensor: Sendable {
    public var shape: [Int]
    public var values: [Double]
    public var precision: Precision
    public init(shape: [Int], values: [Double], precision: Precision) {
        self.shape = shape; self.values = values; self.precision = precision
    }
}

/// The sampler's setup (SPEC §6, the file's /sampler group): the initial state x_init, the
/// labels, the number of Heun steps, and the guidance scale (nil: no guidance).
public struct SamplerSetup: Sendable {
    public var xInit: Tensor<Double>
    public var labels: [Int]
    public var steps: Int
    public var cfgScale: Double?
    public init(xInit: Tensor<Double>, labels: [Int], steps: Int, cfgScale: Double?) {
        self.xInit = xInit; self.labels = labels; self.steps = steps; self.cfgScale = cfgScale
    }
}

/// What a backend needs to reproduce a run: config, parameters (student, and the teacher for a
/// training step), step inputs and sampler setup, as read from a file or made from a seed.
public struct RunSetup: Sendable {
    public var config: ModelConfig
    public var student: Parameters<Double>
    public var teacher: Parameters<Double>?
    public var inputs: StepInputs<Double>?
    public var sampler: SamplerSetup?

    public init(config: ModelConfig, student: Parameters<Double>, teacher: Parameters<Double>? = nil,
                inputs: StepInputs<Double>? = nil, sampler: SamplerSetup? = nil) {
        self.config = config; self.student = student; self.teacher = teacher
        self.inputs = inputs; self.sampler = sampler
    }
}

/// Dataset groups of SPEC §7 and their comparison order: forward-pass order for activations,
/// then losses, gradients in backward-pass order (the order they are produced), the state
/// after the step, and the sampler trajectory.
public enum DatasetOrder {
    public static func sortKey(_ path: String, _ cfg: ModelConfig?) -> (Int, Int, String) {
        let parts = path.split(separator: "/", maxSplits: 1).map(String.init)
        let group = parts.first ?? "", rest = parts.count > 1 ? parts[1] : ""
        let keys = cfg?.studentParameters.map(\.key) ?? []
        func keyIndex(_ k: String) -> Int { keys.firstIndex(of: k) ?? Int.max / 2 }
        switch group {
        case "params": return (0, keyIndex(rest), rest)
        case "teacher": return (1, keyIndex(rest), rest)
        case "inputs": return (2, 0, rest)
        case "activations":
            let acts = cfg.map(ActivationName.all) ?? []
            return (3, acts.firstIndex(of: rest) ?? Int.max / 2, rest)
        case "losses": return (4, LossName.all.firstIndex(of: rest) ?? 99, rest)
        case "grads": return (5, -keyIndex(rest), rest)
        case "after_step":
            if rest.hasPrefix("params/") { return (6, keyIndex(String(rest.dropFirst(7))), rest) }
            if rest.hasPrefix("teacher/") { return (7, keyIndex(String(rest.dropFirst(8))), rest) }
            return (8, 0, rest)
        case "sampler":
            if rest == "sigmas" { return (9, -2, rest) }
            if rest == "out" { return (9, Int.max / 2, rest) }
            if rest.hasPrefix("x."), let i = Int(rest.dropFirst(2)) { return (9, i, rest) }
            return (9, -1, rest)
        default: return (10, 0, path)
        }
    }

    public static func sorted(_ paths: [String], _ cfg: ModelConfig?) -> [String] {
        paths.sorted { sortKey($0, cfg) < sortKey($1, cfg) }
    }
}
