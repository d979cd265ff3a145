import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast
import SDDiTReference

/// The implementations `oracle` can run by name.
public enum Backend: String, CaseIterable, Sendable {
    /// The float64 reference: the truth.
    case ref
    /// The same reference code in Float80 (x86 extended precision): checks the truth's rounding.
    case ref80
    /// The float32 fast path (OpenBLAS).
    case fast
    /// The fast path under PyTorch's autocast policy with fp16 / bf16 matmuls.
    case fastFP16 = "fast-fp16"
    case fastBF16 = "fast-bf16"
    /// Every stored tensor in fp16 / bf16.
    case fastFP16Pure = "fast-fp16-pure"
    case fastBF16Pure = "fast-bf16-pure"
    /// float32 with every matmul's operands in TF32 (NVIDIA Ampere+ with TF32 enabled).
    case fastTF32 = "fast-tf32"
    /// float32 with the patch embedding (a Conv2d) in TF32: PyTorch's default on Ampere and
    /// later GPUs (cuDNN convolutions in TF32, matmuls in float32).
    case fastTF32Conv = "fast-tf32-conv"

    public var fastPrecision: FastPrecision? {
        switch self {
        case .ref, .ref80: return nil
        case .fast: return .fp32
        case .fastFP16: return .fp16
        case .fastBF16: return .bf16
        case .fastFP16Pure: return .pureFP16
        case .fastBF16Pure: return .pureBF16
        case .fastTF32: return .tf32
        case .fastTF32Conv: return .fp32
        }
    }

    /// `memory`: the bytes the run may use (default: this machine's), checked before it starts.
    /// A fast mode's results are held as Double: its check counts them beside the step.
    /// `variant`: a planted deviation of the fast path (tests, `oracle dump --plant`).
    public func run(_ setup: RunSetup, memory: Double? = nil, variant: FastVariant? = nil) throws -> [String: NamedTensor] {
        if fastPrecision != nil { try checkFits(setup, memory: memory, holdingResults: true) }
        var out: [String: NamedTensor] = [:]
        try stream(setup, memory: memory, checked: fastPrecision != nil, variant: variant) { out[$0] = $1 }
        return out
    }

    /// `run`'s results one at a time, each as soon as it is final: the reference keeps none
    /// (`ReferenceBackend.stream`); the fast path holds its float32 model only, with AdamW's
    /// first step and the EMA applied one tensor at a time (`FastBackend.stream`, the numbers
    /// of `FastBackend.run` bit for bit), in `DatasetOrder`.
    public func stream(_ setup: RunSetup, memory: Double? = nil, variant: FastVariant? = nil, emit: (String, NamedTensor) throws -> Void) throws {
        try stream(setup, memory: memory, checked: false, variant: variant, emit: emit)
    }

    func stream(_ setup: RunSetup, memory: Double?, checked: Bool, variant: FastVariant? = nil, emit: (String, NamedTensor) throws -> Void) throws {
        if !checked { try checkFits(setup, memory: memory) }
        if let p = fastPrecision {
            var v = variant ?? FastVariant()
            if self == .fastTF32Conv { v.tf32PatchEmbedding = true }   // the TF32 convolution is this backend
            return try FastBackend.stream(setup.fastSetup, precision: p, variant: v, emit: emit)
        }
        if variant != nil { throw ExchangeError("\(rawValue): planted variants are the fast path's (--plant needs a fast backend)") }
        if self == .ref { return try ReferenceBackend.stream(setup, as: Double.self, emit: emit) }
        #if arch(x86_64) || arch(i386)
        return try ReferenceBackend.stream(setup, as: Float80.self, emit: emit)
        #else
        throw ExchangeError("ref80: Float80 is not available on this architecture")
        #endif
    }

    /// Bytes a training step of this backend needs at batch N with V visible tokens, roughly,
    /// streamed (its results handed over one at a time), the Double setup included.
    public func estimatedStepBytes(_ cfg: ModelConfig, batch N: Int, visible V: Int) -> Double {
        switch self {
        case .ref: return cfg.estimatedReferenceStepBytes(batch: N, visible: V, scalarBytes: 8)
        case .ref80: return cfg.estimatedReferenceStepBytes(batch: N, visible: V, scalarBytes: 16)
        default:
            let c = cfg.parameterCounts
            return 8 * Double(c.total + c.encoder + c.head)
                + FastBackend.estimatedStreamBytes(cfg, batch: N, visible: V, precision: fastPrecision!)
        }
    }

    /// Bytes of `run`'s results held as Double for `s` (what `stream` hands over, all of it).
    public func estimatedResultsBytes(_ s: RunSetup) -> Double {
        let (N, V) = s.batchAndVisible
        return FastBackend.estimatedResultsBytes(s.config, batch: N, visible: V, samplerSteps: s.sampler?.steps)
    }

    /// Refuses, before allocating, a setup this backend cannot hold in this machine's memory
    /// (`holdingResults`: with every result held as Double too, as `run` holds them).
    public func checkFits(_ s: RunSetup, memory: Double? = nil, holdingResults: Bool = false) throws {
        let (N, V) = s.batchAndVisible
        var need = estimatedStepBytes(s.config, batch: N, visible: V)
        if holdingResults { need += estimatedResultsBytes(s) }
        do {
            try s.config.checkMemory(need: need, what: "\(rawValue): a training step at batch \(N)" + (holdingResults ? " with its results held" : ""),
                                     available: memory ?? Double(ProcessInfo.processInfo.physicalMemory))
        } catch { throw ExchangeError("\(error)") }
    }
}

extension RunSetup {
    /// The batch (of the step or the sampler) and the step's visible tokens.
    var batchAndVisible: (Int, Int) {
        let N = max(inputs?.labels.count ?? 0, sampler?.labels.count ?? 0, 1)
        let V = inputs.map { I in I.mask.first.map { m in m.filter { $0 == 0 }.count } ?? config.tokens } ?? config.tokens
        return (N, V)
    }
}

/// A run made from a seed: random non-zero parameters (no adaLN-Zero), a teacher that
/// differs from the student, random inputs and centers, and a sampler setup.
public enum SeededSetup {
    /// A seeded teacher differs from its student: teacher = student + 0.1 x a second draw.
    @inline(__always) static func teacherValue(_ student: Double, _ draw: Double) -> Double { student + 0.1 * draw }

    public static func make(_ cfg: ModelConfig, seed: UInt64, batch: Int, maskRatio: Double,
                            sampleSteps: Int?, cfgScale: Double? = nil, init mode: Initialization.Mode = .random) -> RunSetup {
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: mode, seed: seed)
        var TP = P.subset(cfg.teacherParameters)
        if mode == .random {
            // Teacher = student + small seeded perturbation (fixed tensors stay as they are); the
            // second draw one tensor at a time (`Initialization.parameters` draws through the same stream).
            let teacherKeys = Set(cfg.teacherParameters.filter { !$0.frozen }.map(\.key))
            var Q = Initialization.Stream(cfg, mode: .random, seed: seed &+ 1)
            while let (s, q) = Q.next() {
                guard teacherKeys.contains(s.key), let q else { continue }
                var t = TP[s.key]
                for i in 0..<t.count { t.data[i] = teacherValue(t.data[i], q[i]) }
                TP[s.key] = t
            }
        }
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: maskRatio, seed: seed &+ 2)
        var sampler: SamplerSetup? = nil
        if let steps = sampleSteps, steps > 0 {
            var rng = SeededRandom(seed: seed &+ 3)
            let shape = [batch, cfg.inChannels, cfg.inputSize, cfg.inputSize]
            let x = rng.normals(shape.reduce(1, *), std: cfg.sigmaMax)
            let labels = (0..<batch).map { _ in Int(rng.next() % UInt64(cfg.numClasses)) }
            sampler = SamplerSetup(xInit: Tensor(shape: shape, data: x), labels: labels, steps: steps, cfgScale: cfgScale)
        }
        return RunSetup(config: cfg, student: P, teacher: TP, inputs: I, sampler: sampler)
    }
}

extension SeededSetup {
    /// `make`'s parameters (random mode) as a forward-and-backward-only fast model, built one
    /// tensor at a time: the same float32 values as `FastModel(make(...).fastSetup...)` with
    /// three float32 copies of the parameters in memory instead of AdamW's and Double's too.
    public static func forwardBackwardModel(_ cfg: ModelConfig, seed: UInt64, precision: FastPrecision) throws -> FastModel {
        let m = FastModel(cfg, precision: precision, forwardBackwardOnly: ())
        let teacherKeys = Set(cfg.teacherParameters.map(\.key))
        var P = Initialization.Stream(cfg, mode: .random, seed: seed), Q = Initialization.Stream(cfg, mode: .random, seed: seed &+ 1)
        while let (s, p) = P.next(), let (_, q) = Q.next() {
            let v: [Double] = p ?? (s.key == "pos_embed"
                ? SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true)
                : SinCosPosEmbed.table(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false) as Tensor<Double>).data
            try m.load(s.key, v)
            guard teacherKeys.contains(s.key) else { continue }
            if s.frozen { try m.load(s.key, teacher: true, v); continue }
            var t = v
            for i in 0..<t.count { t[i] = teacherValue(t[i], q![i]) }
            try m.load(s.key, teacher: true, t)
        }
        return m
    }
}

extension RunSetup {
    /// The same setup in the fast path's terms.
    public var fastSetup: FastBackend.Setup {
        var f = FastBackend.Setup(config: config, student: student.tensors, teacher: teacher?.tensors)
        if let I = inputs {
            f.inputs = FastStepInputs(x0: I.x0.data, labels: I.labels, sigmaS: I.sigmaS, noiseS: I.noiseS.data,
                                      noiseT: I.noiseT.data, mask: I.mask)
            f.centerCls = I.centerCls.data; f.centerPatch = I.centerPatch.data
        }
        if let s = sampler { f.sampler = (s.xInit, s.labels, s.steps, s.cfgScale) }
        return f
    }
}
