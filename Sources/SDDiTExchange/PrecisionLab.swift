import Foundation
import SDDiTCore
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
/// sampler's denoiser calls, recording each named tensor's range against a half type.
public enum HeadroomSweep {
    public struct Row: Sendable {
        public var sigma: Double
        public var phase: String
        public var entries: [HeadroomEntry]
    }

    public static func run(_ setup: RunSetup, mode: FastPrecision, sigmas: [Double], lossScale: Float,
                           samplerSteps: Int) throws -> [Row] {
        var rows: [Row] = []
        let f = setup.fastSetup
        let cfg = setup.config
        for s in sigmas {
            let m = FastModel(cfg, precision: mode, student: f.student, teacher: f.teacher,
                              centerCls: f.centerCls, centerPatch: f.centerPatch)
            m.scaler = LossScaler(enabled: true); m.scaler.scale = lossScale
            m.monitor.recordHeadroom = true
            var I = f.inputs!
            I.sigmaS = Array(repeating: s, count: I.labels.count)
            _ = try m.forwardBackward(I)
            rows.append(Row(sigma: s, phase: "train", entries: m.monitor.ordered))
        }
        if samplerSteps > 1 {
            let N = f.inputs!.labels.count
            let sig = FastBackend.sigmas(steps: samplerSteps, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
            var rng = SeededRandom(seed: 5)
            let x = rng.normals(N * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: cfg.sigmaMax)
            let m = FastModel(cfg, precision: mode, student: f.student, teacher: nil)
            m.monitor.recordHeadroom = true
            var xi = x
            for i in 0..<(sig.count - 1) {   // the real Heun trajectory, one step at a time
                m.monitor.reset()
                xi = try m.sample(xInit: xi, labels: f.inputs!.labels, sigmas: [sig[i], sig[i + 1]], cfgScale: nil).last!
                rows.append(Row(sigma: sig[i], phase: "sample", entries: m.monitor.ordered))
            }
        }
        return rows
    }
}
