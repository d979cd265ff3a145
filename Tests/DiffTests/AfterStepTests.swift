import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTReference

// After-step parameters are judged by the math of AdamW's first step (AfterStepRule), not by a
// blanket "within lr": the optimizer bugs people make fail in float32 files as they do in
// float64 ones, and clean float32 runs pass on every seed.
@Suite("After-step rule")
struct AfterStepTests {
    enum Bug: String, CaseIterable, Sendable {
        case none
        case eps1e6 = "AdamW eps 1e-6"
        case weightDecay = "weight decay 0.01 left on"
        case finalLayerNotOptimized = "final_layer missing from the optimizer"
        case lrTenth = "lr / 10"
    }

    /// PyTorch's AdamW, first step from zero moments, in the file's precision (float32 steps
    /// rounded as torch does them: tensors in float32, the scalars in double), with one bug.
    static func step(_ p0: Double, _ g: Double, lr: Double, bug: Bug, float32: Bool) -> Double {
        let eps = bug == .eps1e6 ? 1e-6 : 1e-8, wd = bug == .weightDecay ? 0.01 : 0, rate = bug == .lrTenth ? lr / 10 : lr
        let b1 = 0.9, b2 = 0.999
        if float32 {
            var p = Float(p0)
            p *= Float(1 - rate * wd)
            let m = Float(1 - b1) * Float(g), v = Float(1 - b2) * Float(g) * Float(g)
            let denom = v.squareRoot() / Float((1 - b2).squareRoot()) + Float(eps)
            p -= Float(rate / (1 - b1)) * (m / denom)
            return Double(p)
        }
        var p = p0 * (1 - rate * wd)
        let m = (1 - b1) * g, v = (1 - b2) * g * g
        p -= rate / (1 - b1) * (m / (v.squareRoot() / (1 - b2).squareRoot() + eps))
        return p
    }

    /// A training-step file of the tiny config (N = 2, mask 0.25, lr as given) computed by the
    /// fast path (float32) or the reference (float64), whose after-step student and teacher are
    /// then recomputed from its own /params and /grads by an AdamW with `bug` (and the EMA on
    /// that). `grads: false` leaves the gradients out of the file.
    static func file(seed: UInt64, lr: Double = 1e-2, bug: Bug, float32: Bool, grads: Bool = true) throws -> String {
        var cfg = ModelConfig.tiny
        cfg.lr = lr
        let setup = SeededSetup.make(cfg, seed: seed, batch: 2, maskRatio: 0.25, sampleSteps: nil)
        let (merged, ints) = exchangeDatasets(setup, try (float32 ? Backend.fast : Backend.ref).run(setup), params: float32 ? .float32 : nil)
        var ds = merged
        for spec in cfg.studentParameters where !spec.frozen {
            let p0 = ds["params/" + spec.key]!.values, g = ds["grads/" + spec.key]!.values
            var p1 = p0
            if !(bug == .finalLayerNotOptimized && spec.key.hasPrefix("final_layer.")) {
                for i in p1.indices { p1[i] = step(p0[i], g[i], lr: lr, bug: bug, float32: float32) }
            }
            ds["after_step/params/" + spec.key]!.values = p1
            if let t = ds["after_step/teacher/" + spec.key] {
                let t0 = ds["teacher/" + spec.key]!.values, beta = cfg.emaBeta
                var t1 = t.values
                for i in t1.indices {
                    t1[i] = float32 ? Double(Float(beta) * Float(t0[i]) + Float(1 - beta) * Float(p1[i])) : beta * t0[i] + (1 - beta) * p1[i]
                }
                ds["after_step/teacher/" + spec.key]!.values = t1
            }
        }
        if !grads { ds = ds.filter { !$0.key.hasPrefix("grads/") } }
        let path = tempDir().appendingPathComponent("\(bug)-\(seed)-\(float32 ? 32 : 64).h5").path
        try ExchangeWriter.write(path, config: cfg, datasets: ds, integers: ints)
        return path
    }

    static func diff(_ path: String, allowMissing: Bool = false) throws -> DiffReport {
        var o = DiffOptions()
        o.allowMissing = allowMissing
        return try DiffEngine.run(a: .file(path), b: .backend(.ref), options: o)
    }

    /// Clean float32 and float64 steps pass on several seeds, with the worst use of an
    /// interval printed (the margin of the rounding slack).
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func cleanStepsPass(seed: UInt64) throws {
        for f32 in [true, false] {
            let r = try Self.diff(try Self.file(seed: seed, bug: .none, float32: f32))
            for c in r.comparisons where !c.passed {
                Issue.record(Comment(rawValue: "seed \(seed) float\(f32 ? 32 : 64): " + c.lines(labelA: r.labelA, labelB: r.labelB).joined(separator: "\n")))
            }
            #expect(r.passed, "seed \(seed) float\(f32 ? 32 : 64): \(r.summary)")
            let worst = maxOrNaN(r.comparisons.filter { $0.name.hasPrefix("after_step/") && $0.tolerance.label != nil }.map(\.maxRel), empty: -1)
            #expect(worst >= 0 && worst < 1, "seed \(seed) float\(f32 ? 32 : 64): worst use of an after-step interval \(worst), expected in [0, 1) (-1: no after-step tensor judged by the interval rule)")
            print("after-step rule, clean float\(f32 ? 32 : 64) seed \(seed): worst use of an interval \(worst)")
        }
        // the fast path's own step (not recomputed) passes too
        var o = DiffOptions()
        o.seed = seed; o.batch = 2; o.maskRatio = 0.25; o.sampleSteps = nil
        var cfg = ModelConfig.tiny
        cfg.lr = 1e-2
        o.config = cfg
        let r = try DiffEngine.run(a: .backend(.fast), b: .backend(.ref), options: o)
        #expect(r.passed, "fast vs ref seed \(seed): \(r.summary)")
    }

    /// Each planted optimizer bug fails, in float32 and in float64, at an after-step tensor
    /// (the blanket float32 rule of before passed all four: README "After-step parameters").
    @Test(arguments: [Bug.eps1e6, .weightDecay, .finalLayerNotOptimized, .lrTenth])
    func optimizerBugsFail(_ bug: Bug) throws {
        for f32 in [true, false] {
            for seed in [1, 2] as [UInt64] {
                let r = try Self.diff(try Self.file(seed: seed, bug: bug, float32: f32))
                let failed = r.comparisons.filter { !$0.passed }
                #expect(!failed.isEmpty, "\(bug.rawValue), float\(f32 ? 32 : 64), seed \(seed): passed (\(r.summary))")
                #expect(failed.allSatisfy { $0.name.hasPrefix("after_step/") },
                        "\(bug.rawValue): failures outside after_step: \(failed.map(\.name).prefix(3))")
                if bug == .finalLayerNotOptimized {
                    #expect(failed.first?.name.hasPrefix("after_step/params/final_layer.") == true, "\(bug.rawValue): the first failure is not the final layer's: \(failed.first?.name ?? "none")")
                }
                if let c = failed.first { print("\(bug.rawValue) float\(f32 ? 32 : 64) seed \(seed): \(failed.count) failed; " + c.lines(labelA: r.labelA, labelB: r.labelB).joined(separator: " | ")) }
            }
        }
    }

    /// Without /grads in the file the rule falls back to the reference's gradient within the
    /// float32 gradient bound: steps of the wrong size or missing still fail; a clean step passes.
    @Test func withoutRecordedGradients() throws {
        let clean = try Self.diff(try Self.file(seed: 5, bug: .none, float32: true, grads: false), allowMissing: true)
        #expect(clean.failed == 0, "a clean float32 file without gradients fails: \(clean.summary)")
        for bug in [Bug.lrTenth, .finalLayerNotOptimized] {
            let r = try Self.diff(try Self.file(seed: 5, bug: bug, float32: true, grads: false), allowMissing: true)
            #expect(r.failed > 0, "\(bug.rawValue) without gradients: \(r.summary)")
        }
    }

    /// The rule itself on hand-made numbers: a step of exactly lr where |g| >> eps passes, a
    /// step of 0.99 lr fails, and an entry whose gradient the side records with the opposite
    /// sign (noise) may sit 2 lr away from the other side's.
    @Test func ruleOnHandMadeNumbers() {
        let lr = 1e-2
        func t(_ v: [Double], _ p: Precision) -> NamedTensor { NamedTensor(shape: [v.count], values: v, precision: p) }
        let before = ["params/w": t([0.5, 0.5, 0.0], .float32)]
        let gE = t([1e-3, -2e-3, 1e-12], .float64), gA = t([1e-3, -2e-3, -3e-9], .float32)
        let e = t([0.5 - lr * 1e-3 / (1e-3 + 1e-8), 0.5 + lr * 2e-3 / (2e-3 + 1e-8), -lr * 1e-12 / (1e-12 + 1e-8)], .float64)
        let good = t([Double(Float(e.values[0])), Double(Float(e.values[1])), Double(Float(lr * 3e-9 / (3e-9 + 1e-8)))], .float32)
        let ctx = AfterStepContext(lr: lr, weightDecay: 0, eps: 1e-8, emaBeta: 0.996, before: before,
                                   sideA: ["grads/w": gA], sideB: ["grads/w": gE])
        let c = AfterStepRule.compare("after_step/params/w", good, e, ctx)!
        #expect(c.passed, "a step within its interval fails: \(c.lines(labelA: "a", labelB: "b"))")
        var short = good
        short.values[0] = 0.5 - 0.99 * lr
        let c2 = AfterStepRule.compare("after_step/params/w", short, e, ctx)!
        #expect(!c2.passed && c2.bad == 1 && c2.outside?.index == [0], "a step 0.99 lr short at [0] passes or fails elsewhere: passed \(c2.passed), bad \(c2.bad), first outside \(String(describing: c2.outside?.index))")
        // unmoved parameter
        let still = t([0.5, 0.5, 0.0], .float32)
        #expect(AfterStepRule.compare("after_step/params/w", still, e, ctx)!.bad == 3, "a parameter left unmoved (no step taken) is not caught at all 3 entries")
    }
}
