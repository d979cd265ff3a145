import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast
import SDDiTReference

/// Named reproductions of mixed-precision failures, and the sigma sweep behind them.
public struct PrecisionScenario: Sendable {
    public let name: String
    public let summary: String
    /// What removes the failure, checked by the tests.
    public let remedy: String
    let make: @Sendable () -> (RunSetup, (inout [String: Tensor<Double>]) -> Void)

    /// The scenarios `oracle precision --scenario` runs. Each was found with the tool
    /// itself (`oracle precision` sweep; see the README).
    public static let all: [PrecisionScenario] = [
        PrecisionScenario(
            name: "dino-grad-overflow",
            summary: "batch 2: GradScaler's initial scale 2^16 times the DINO gradient (p - q)/(tau_S N) = 3.3e5 (p - q) exceeds fp16's 65504 where the gradient enters the head's fp16 output",
            remedy: "GradScaler's back-off (the step is skipped and the scale halves; at 2^14, two skipped steps later, the step is clean), a larger batch, or bf16",
            make: { (setup(batch: 2, sigma: nil), { _ in }) }),
        PrecisionScenario(
            name: "edm-loss-weight-fp16",
            summary: "pure fp16 (the loss weighting in fp16 too), every sample at sigma_min = 0.002: lambda = (s^2 + sd^2)/(s sd)^2 = 2.5e5 > 65504 is inf, so L_G is inf",
            remedy: "float32 loss weighting (fast-fp16, PyTorch's autocast policy: L_G is finite at the same sigma; after one GradScaler back-off, at 2^15, the whole step is clean) or bf16",
            make: { (setup(batch: 16, sigma: ModelConfig.tiny.sigmaMin), { _ in }) }),
        PrecisionScenario(
            name: "attention-logit-overflow",
            summary: "batch 16, block 0's qkv weights grown 150x (large activations): q k^T / sqrt(d) exceeds 65504 in the fp16 matmul and softmax turns inf into NaN",
            remedy: "bf16, or attention logits in float32",
            make: { (setup(batch: 16, sigma: nil), { P in P["blocks.0.attn.qkv.weight"] = P["blocks.0.attn.qkv.weight"]!.map { $0 * 150 } }) }),
    ]

    static func setup(batch: Int, sigma: Double?) -> RunSetup {
        var s = SeededSetup.make(.tiny, seed: 17, batch: batch, maskRatio: 0.25, sampleSteps: nil)
        if let sigma { s.inputs!.sigmaS = Array(repeating: sigma, count: batch) }
        return s
    }

    public static func named(_ n: String) -> PrecisionScenario? { all.first { $0.name == n } }

    /// The mode a scenario is meant for when `--mode` is not given.
    public var defaultMode: FastPrecision { name == "edm-loss-weight-fp16" ? .pureFP16 : .fp16 }


    public struct Outcome: Sendable {
        public var losses: [String: Double]
        public var firstNonFinite: NonFiniteError?
        public var explanation: String?
        public var lossScale: Float
    }

    /// Runs one training step in `mode` with the anomaly monitor on.
    public func run(mode: FastPrecision, lossScale: Float? = nil) throws -> Outcome {
        let (setup, mutate) = make()
        var f = setup.fastSetup
        mutate(&f.student)
        if var t = f.teacher { mutate(&t); f.teacher = t }
        let m = FastModel(setup.config, precision: mode, student: f.student, teacher: f.teacher,
                          centerCls: f.centerCls, centerPatch: f.centerPatch)
        m.monitor.anomaly = true
        if let ls = lossScale { m.scaler.scale = ls }
        do {
            let r = try m.trainStep(f.inputs!)
            return Outcome(losses: r.losses, firstNonFinite: nil, explanation: nil, lossScale: r.lossScale)
        } catch let e as NonFiniteError {
            return Outcome(losses: [:], firstNonFinite: e, explanation: e.explanation(halfMax: mode.isHalf && mode.isFP16 ? 65504 : nil),
                           lossScale: m.scaler.scale)
        }
    }
}

/// The headroom sweep: one training step per sigma (every sample at that sigma) and the
/// sampler's denoiser calls, recording each named tensor's range against a half type, and
/// each gradient's exponents (for the loss scale below which it goes quiet).
public enum HeadroomSweep {
    public struct Row: Sendable {
        public var sigma: Double
        public var phase: String
        public var entries: [HeadroomEntry]
    }

    /// The sweep over a setup (its student, teacher, inputs and centers).
    public static func run(_ setup: RunSetup, mode: FastPrecision, sigmas: [Double], lossScale: Float,
                           samplerSteps: Int) throws -> [Row] {
        let f = setup.fastSetup
        let m = FastModel(setup.config, precision: mode, student: f.student, teacher: f.teacher,
                          centerCls: f.centerCls, centerPatch: f.centerPatch)
        return try run(m, inputs: f.inputs!, sigmas: sigmas, lossScale: lossScale, samplerSteps: samplerSteps)
    }

    /// The sweep of `SeededSetup.make(cfg, seed:, batch:, maskRatio:)` with a
    /// forward-and-backward-only model: the same numbers in the memory of three float32
    /// copies of the parameters (XL/2 at batch 1 in about 10 GB).
    public static func run(_ cfg: ModelConfig, seed: UInt64, batch: Int, maskRatio: Double, mode: FastPrecision,
                           sigmas: [Double], lossScale: Float, samplerSteps: Int,
                           progress: ((String) -> Void)? = nil) throws -> [Row] {
        let m = try SeededSetup.forwardBackwardModel(cfg, seed: seed, precision: mode)
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: maskRatio, seed: seed &+ 2)
        m.centerCls = I.centerCls.data.map { Float($0) }; m.centerPatch = I.centerPatch.data.map { Float($0) }
        let fi = FastStepInputs(x0: I.x0.data, labels: I.labels, sigmaS: I.sigmaS, noiseS: I.noiseS.data,
                                noiseT: I.noiseT.data, mask: I.mask)
        return try run(m, inputs: fi, sigmas: sigmas, lossScale: lossScale, samplerSteps: samplerSteps, progress: progress)
    }

    /// One model serves every sigma (forward and backward leave its parameters unchanged).
    public static func run(_ m: FastModel, inputs: FastStepInputs, sigmas: [Double], lossScale: Float,
                           samplerSteps: Int, progress: ((String) -> Void)? = nil) throws -> [Row] {
        var rows: [Row] = []
        let cfg = m.cfg
        m.monitor.recordHeadroom = true
        for (j, s) in sigmas.enumerated() {
            progress?(String(format: "training step at sigma %.4g (%d of %d)", s, j + 1, sigmas.count))
            m.monitor.reset()
            m.scaler = LossScaler(enabled: true); m.scaler.scale = lossScale
            var I = inputs
            I.sigmaS = Array(repeating: s, count: I.labels.count)
            _ = try m.forwardBackward(I)
            m.recordGradientHeadroom(scale: lossScale)
            rows.append(Row(sigma: s, phase: "train", entries: m.monitor.ordered))
        }
        if samplerSteps > 1 {
            let N = inputs.labels.count
            let sig = HeunSampler.sigmas(steps: samplerSteps, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
            var rng = SeededRandom(seed: 5)
            var xi = rng.normals(N * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: cfg.sigmaMax)
            for i in 0..<(sig.count - 1) {   // the real Heun trajectory, one step at a time
                progress?(String(format: "sampler step %d of %d", i + 1, sig.count - 1))
                m.monitor.reset()
                xi = try m.sample(xInit: xi, labels: inputs.labels, sigmas: [sig[i], sig[i + 1]], cfgScale: nil).last!
                rows.append(Row(sigma: sig[i], phase: "sample", entries: m.monitor.ordered))
            }
        }
        m.monitor.recordHeadroom = false
        return rows
    }
}
