import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast

/// The first quiet failure of a half-precision run: the step, GradScaler's scale, and the
/// gradient tensors whose elements underflow in the half type while float32 resolves them.
public struct QuietFailure: Sendable, CustomStringConvertible {
    public var step: Int
    public var scale: Float, initialScale: Float
    public var reason: String
    /// (tensor, fraction of its float32-nonzero elements that are zero or subnormal in the half type)
    public var zeroed: [(tensor: String, fraction: Double)]

    public var description: String {
        var s = String(format: "quiet failure at step %d: %@; loss scale %g (from %g)", step, reason, Double(scale), Double(initialScale))
        if zeroed.isEmpty { return s + "; no gradient tensor underflows yet" }
        s += "; gradients zero or subnormal in the half type but not in float32: "
        s += zeroed.prefix(4).map { String(format: "%@ %.0f%%", $0.tensor, 100 * $0.fraction) }.joined(separator: ", ")
        if zeroed.count > 4 { s += " (+\(zeroed.count - 4) more tensors over 50%)" }
        return s + "; as the scale falls the half type loses the gradient, and training stops learning while its loss stays finite"
    }
    public var json: [String: Any] {
        ["step": step, "scale": Double(scale), "initial_scale": Double(initialScale), "reason": reason,
         "zeroed": zeroed.map { ["tensor": $0.tensor, "fraction": $0.fraction] }, "message": description]
    }
}

/// Watches a training run for the failures that stay finite (GradScaler collapse). Once
/// GradScaler's scale has fallen 2^10 below its start without growing back (a healthy fp16 run
/// backs off a few times, then holds or grows), each new lower scale reruns that step's
/// minibatch with the same parameters in the half type and in float32 and counts, per
/// gradient tensor, the elements float32 resolves but the half type flushes (|g x scale|
/// below its smallest normal). It warns once: at the first such step where a tensor loses
/// more than half of its elements, or where the scale is below 1, naming the tensors, the
/// fractions and the scale.
public final class QuietFailureMonitor {
    /// Halvings below its start, never grown back, before the scale is watched: a healthy fp16
    /// run backs off a few times, then holds or grows.
    public static let collapseHalvings = 10
    public private(set) var failure: QuietFailure?
    var initialScale: Float?
    var grew = false, last: Float = 0, lastChecked = Float.infinity

    public init() {}

    /// Call after each step (`rec` its record, `inputs` its minibatch); returns the failure on
    /// the step where it is first found.
    public func observe(_ t: Trainer, _ rec: TrainRecord, inputs: FastStepInputs) throws -> QuietFailure? {
        let m = t.model
        guard failure == nil, m.scaler.enabled else { return nil }
        let s = rec.lossScale
        if initialScale == nil { initialScale = max(s, m.scaler.scale) }
        if s > last, last > 0 { grew = true }
        last = s
        let start = initialScale!
        guard s < 1 || (!grew && start / s >= Float(1 << Self.collapseHalvings)), s < lastChecked else { return nil }
        lastChecked = s
        let zeroed = try Self.zeroedGradients(t, inputs: inputs, scale: s)
        guard s < 1 || !zeroed.isEmpty else { return nil }
        let reason = s < 1 ? "GradScaler's loss scale fell below 1"
            : String(format: "GradScaler's loss scale halved %.0f times without growing back", log2(Double(start / s)))
        let f = QuietFailure(step: rec.step, scale: s, initialScale: start, reason: reason, zeroed: zeroed)
        failure = f
        return f
    }

    /// Restores a failure recorded in a checkpoint (it is not reported twice).
    public func restore(_ f: QuietFailure) { failure = f }

    /// Per gradient tensor: among the elements float32 computes as normal non-zero numbers,
    /// the fraction the half-precision model flushes (|g x scale| below the half type's
    /// smallest normal), on the same minibatch and parameters; tensors over 50%, largest first.
    static func zeroedGradients(_ t: Trainer, inputs I: FastStepInputs, scale: Float) throws -> [(tensor: String, fraction: Double)] {
        let m = t.model, prec = m.prec
        let half = FastModel(m.cfg, precision: prec, student: m.parameters(), teacher: m.parameters(teacher: true),
                             centerCls: m.centerCls.map(Double.init), centerPatch: m.centerPatch.map(Double.init))
        half.scaler.scale = scale
        half.discriminativeWeight = m.discriminativeWeight
        let f32 = FastModel(m.cfg, precision: .fp32, student: m.parameters(), teacher: m.parameters(teacher: true),
                            centerCls: m.centerCls.map(Double.init), centerPatch: m.centerPatch.map(Double.init))
        f32.discriminativeWeight = m.discriminativeWeight
        _ = try half.forwardBackward(I, tauT: nil)
        _ = try f32.forwardBackward(I, tauT: nil)
        let gh = half.gradients(), g32 = f32.gradients(), minNormal = Double(prec.halfMinNormal)
        var out: [(String, Double)] = []
        for (k, a) in g32 {
            guard let h = gh[k] else { continue }
            var resolved = 0, flushed = 0
            for i in 0..<a.data.count where a.data[i] != 0 && abs(a.data[i]) >= Double(Float.leastNormalMagnitude) {
                resolved += 1
                if !(abs(h.data[i] * Double(scale)) >= minNormal) { flushed += 1 }
            }
            if resolved > 0, Double(flushed) / Double(resolved) > 0.5 { out.append((k, Double(flushed) / Double(resolved))) }
        }
        return out.sorted { $0.1 > $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
    }
}

/// `oracle precision --scenario gradscaler-collapse`: the quiet failure in under a second.
/// Tiny config, pure fp16, batch 16, ln sigma ~ N(-3, 1.2) instead of N(-1.2, 1.2): most
/// minibatches hold a sigma where lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
/// overflows fp16, so GradScaler skips and halves step after step, and the gradients underflow
/// in fp16 while every loss stays finite. (At SPEC's distribution and batch 256 the same
/// collapse takes ~1500 steps: one overflowing minibatch in ~30.)
public enum CollapseScenario {
    public static let name = "gradscaler-collapse"
    public static let summary = "tiny, batch 16, 60 steps, ln sigma ~ N(-3, 1.2); in pure fp16 lambda(sigma) overflows in most minibatches, GradScaler halves its scale step after step and the gradients underflow while the loss stays finite"
    public static let remedy = "bf16 (float32's range: no loss scaling needed) or float32; fp16 autocast is reported here too (at batch 16 the DINO gradient drives its scale down to 2^6, where the adaLN weights' gradients flush)"

    public static func options(_ p: FastPrecision, steps: Int = 60) -> TrainOptions {
        var cfg = ModelConfig.tiny
        cfg.pMean = -3
        cfg.lr = 1e-3
        var o = TrainOptions(config: cfg)
        o.precision = p; o.steps = steps; o.batch = 16; o.seed = 3; o.dataSeed = 1
        o.trainSize = 512; o.heldOutSize = 64
        return o
    }

    /// Trains `steps` steps; the trainer (its history and scale) and the monitor's report.
    public static func run(mode p: FastPrecision, steps: Int = 60) throws -> Trainer {
        let t = try Trainer(options(p, steps: steps))
        for _ in 0..<steps { try t.trainStep() }
        return t
    }
}

/// One step's update against the weights: ||theta_k - theta_(k-1)|| / ||theta_(k-1)|| over
/// every trainable student tensor, and per tensor that ratio and the fraction of its elements
/// the step left exactly unchanged. Sums in Double, in parameter order (the same bits at
/// any thread count).
public struct UpdateRatios: Sendable {
    public var total: Double
    /// The fraction of all trainable elements the step left exactly unchanged.
    public var unchanged: Double
    public var perTensor: [(key: String, ratio: Double, unchanged: Double)]

    public init(_ m: FastModel, before: [String: [Float]]) {
        var dAll = 0.0, wAll = 0.0, sameAll = 0, n = 0
        perTensor = []
        for spec in m.cfg.studentParameters {
            guard let now = m.trainable(spec.key), let old = before[spec.key], old.count == now.count else { continue }
            var d = 0.0, w = 0.0, same = 0
            for i in 0..<old.count {
                let a = Double(old[i]), x = Double(now[i]) - a
                d += x * x; w += a * a
                if x == 0 { same += 1 }
            }
            dAll += d; wAll += w; sameAll += same; n += old.count
            perTensor.append((spec.key, w > 0 ? (d / w).squareRoot() : (d > 0 ? .infinity : 0), Double(same) / Double(max(old.count, 1))))
        }
        total = wAll > 0 ? (dAll / wAll).squareRoot() : 0
        unchanged = Double(sameAll) / Double(max(n, 1))
    }
}

/// Training that has stopped moving: the step, the update-to-weight ratio's mean over the
/// window against its early level, the tensors the last step left unchanged, and L_G.
public struct Stall: Sendable, CustomStringConvertible {
    public var step: Int
    public var ratio: Double, reference: Double
    public var window: Int, skipped: Int
    /// (tensor, fraction of its elements the step left exactly unchanged), over half only
    public var stillTensors: [(tensor: String, unchanged: Double)]
    /// L_G's finite mean over the window before the last and over the last.
    public var lossBefore: Double, lossNow: Double

    public var description: String {
        var s = String(format: "training stalled at step %d: the update-to-weight ratio ||dtheta|| / ||theta|| averages %.3g over the last %d steps, %.2g%% of its early level %.3g (median of the first %d applied updates)",
                       step, ratio, window, 100 * ratio / reference, reference, StallMonitor.early)
        if skipped > 0 { s += String(format: "; %d of those %d steps were skipped", skipped, window) }
        if !stillTensors.isEmpty {
            s += "; the last step left unchanged: " + stillTensors.prefix(4).map { String(format: "%@ %.0f%%", $0.tensor, 100 * $0.unchanged) }.joined(separator: ", ")
            if stillTensors.count > 4 { s += " (+\(stillTensors.count - 4) more tensors over 50%)" }
        }
        s += String(format: "; L_G %.4f -> %.4f over the last two windows", lossBefore, lossNow)
        return s + "; the parameters have stopped moving while the loss stays finite"
    }
    public var json: [String: Any] {
        ["step": step, "ratio": ratio, "reference": reference, "window": window, "skipped": skipped,
         "still": stillTensors.map { ["tensor": $0.tensor, "unchanged": $0.unchanged] },
         "loss_before": lossBefore, "loss_now": lossNow, "message": description]
    }
}

/// Watches the update-to-weight ratio (history column 6). AdamW moves every element with a
/// non-zero gradient by about lr whatever the gradient's size (m / sqrt(v) is scale-free),
/// so the ratio stays within a small factor of its early level while training learns (tiny,
/// float32, batch 256: 15% of it after 1500 steps); it vanishes only when the gradients are
/// exactly zero (the moments then decay as 0.9^t) or the steps are skipped. It warns once, at
/// the first step where both hold: the ratio's mean over the last `window` steps (skipped
/// steps count 0) is below 1% of the median of the first `early` applied updates, and the
/// step left more than half of the trainable elements exactly unchanged (an update below
/// half an ulp of its weight, or none). A healthy run's small updates still move every
/// element: float32's ulp is 6e-8 of a weight, AdamW's step about lr.
public final class StallMonitor {
    public static let early = 20, window = 50, fraction = 0.01
    public private(set) var stall: Stall?
    var reference: (value: Double, lastStep: Int)?

    public init() {}
    public func restore(_ s: Stall) { stall = s }

    /// Call after each step with its update; returns the stall on the step where it is first found.
    public func observe(_ t: Trainer, _ u: UpdateRatios) -> Stall? {
        guard stall == nil else { return nil }
        let h = t.history
        if reference == nil {
            var first: [Double] = [], last = 0
            for (i, r) in h.enumerated() where r[4] == 0 && r[6].isFinite && r[6] > 0 {
                first.append(r[6]); last = i
                if first.count == Self.early { break }
            }
            guard first.count == Self.early else { return nil }
            reference = (first.sorted()[Self.early / 2], last)
        }
        let ref = reference!
        guard h.count - Self.window > ref.lastStep else { return nil }
        let w = h.suffix(Self.window)
        guard w.allSatisfy({ $0[6].isFinite }) else { return nil }
        let mean = w.reduce(0.0) { $0 + ($1[4] != 0 ? 0 : $1[6]) } / Double(Self.window)
        guard mean < Self.fraction * ref.value, u.unchanged > 0.5 else { return nil }
        let still = u.perTensor.filter { $0.unchanged > 0.5 }.sorted { $0.unchanged > $1.unchanged || ($0.unchanged == $1.unchanged && $0.key < $1.key) }
        let n = h.count
        let s = Stall(step: t.step, ratio: mean, reference: ref.value, window: Self.window, skipped: w.filter { $0[4] != 0 }.count,
                      stillTensors: still.map { ($0.key, $0.unchanged) },
                      lossBefore: t.windowMean(0, max(0, n - 2 * Self.window)..<(n - Self.window)).mean,
                      lossNow: t.windowMean(0, (n - Self.window)..<n).mean)
        stall = s
        return s
    }
}
