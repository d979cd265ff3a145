import Dispatch
import Foundation
import Synchronization
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTTraining
import SDDiTFast
import SDDiTReference

// The fast path (float32 and half modes) against the float64 reference, at the tolerances of
// Tolerances.rule for each pair of precisions, and the mixed-precision failure scenarios.
@Suite("Fast path")
struct FastPathTests {
    static func expectPass(_ r: DiffReport, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for c in r.comparisons where !c.passed {
            Issue.record(Comment(rawValue: what + ": " + c.lines(labelA: r.labelA, labelB: r.labelB).joined(separator: "\n")),
                         sourceLocation: sourceLocation)
        }
        let passed = r.passed
        #expect(passed, "\(what) fails: \(r.summary)", sourceLocation: sourceLocation)
    }

    @Test(arguments: [0.2, 0.5, 0.0])
    func fastAgainstRefTiny(maskRatio: Double) throws {
        var o = DiffOptions()
        o.seed = 3; o.batch = 2; o.maskRatio = maskRatio; o.sampleSteps = 4; o.cfgScale = 1.5
        Self.expectPass(try DiffEngine.run(a: .backend(.fast), b: .backend(.ref), options: o), "fast vs ref tiny mask \(maskRatio)")
    }

    @Test(arguments: pytorchFixtures + ["golden_tiny.h5", "golden_tiny_ditinit.h5"])
    func fastModesOnFixtures(_ name: String) throws {
        for b in [Backend.fast, .fastFP16, .fastBF16] {
            Self.expectPass(try DiffEngine.run(a: .file(fixture(name)), b: .backend(b), options: DiffOptions()), "\(name) vs \(b.rawValue)")
        }
    }

    /// Same inputs, same thread count: identical float32 results run to run.
    @Test func fastIsDeterministic() throws {
        let s = SeededSetup.make(.tiny, seed: 8, batch: 2, maskRatio: 0.25, sampleSteps: 3)
        let a = try Backend.fast.run(s), b = try Backend.fast.run(s)
        for (k, v) in a {
            let same = v.values == b[k]!.values
            #expect(same, "\(k) differs between two identical fast runs")
        }
    }

    /// Several fast models stepping at once in one process (as parallel tests and a user's
    /// threads do): OpenBLAS's thread count is process-wide and is set to 1 inside attention's
    /// per-head regions; a region must not size its per-worker scratch from a count another
    /// thread has just changed (CI crashed on exactly that). Every concurrent run must equal
    /// the serial one bit for bit (same configured thread count, so the same sums). With 48
    /// runs the code before the fix crashed (SIGSEGV) in 3 of 3 tries; 6 runs did not.
    @Test func fastIsSafeAcrossConcurrentModels() throws {
        let s = SeededSetup.make(.tiny, seed: 9, batch: 2, maskRatio: 0.5, sampleSteps: 2)
        let serial = try Backend.fast.run(s)
        let runs = 48
        let results = Mutex<[[String: NamedTensor]]>([])
        DispatchQueue.concurrentPerform(iterations: runs) { _ in
            if let r = try? Backend.fast.run(s) { results.withLock { $0.append(r) } }
        }
        let all = results.withLock { $0 }
        #expect(all.count == runs, "\(all.count) of \(runs) concurrent runs finished")
        for r in all {
            let differing = serial.keys.filter { r[$0]?.values != serial[$0]!.values }.sorted()
            #expect(differing.isEmpty, "concurrent fast runs differ from the serial run in \(differing.prefix(5))")
        }
    }

    @Test func scenariosFireInHalfAndStaySilentInFloat32() throws {
        #expect(PrecisionScenario.all.count >= 3, "fewer than 3 NaN scenarios")
        for sc in PrecisionScenario.all {
            let half = try sc.run(mode: sc.defaultMode)
            #expect(half.firstNonFinite != nil, "\(sc.name): the detector stayed silent in \(sc.defaultMode)")
            let f32 = try sc.run(mode: .fp32)
            #expect(f32.firstNonFinite == nil, "\(sc.name): float32 produced \(f32.firstNonFinite.map(\.description) ?? "")")
            #expect(f32.losses["total"]?.isFinite == true, "\(sc.name): float32 total loss \(String(describing: f32.losses["total"])) is not finite")
            let bf = try sc.run(mode: .bf16)
            #expect(bf.firstNonFinite == nil, "\(sc.name): the bf16 remedy still fails: \(bf.firstNonFinite.map(\.description) ?? "")")
        }
    }

    @Test func scenarioLocationsAndRemedies() throws {
        let dino = try PrecisionScenario.named("dino-grad-overflow")!.run(mode: .fp16)
        #expect(dino.firstNonFinite?.tensor.hasPrefix("d student.head.out") == true, "dino-grad-overflow in fp16 first goes non-finite elsewhere than d student.head.out: \(dino.firstNonFinite?.description ?? "none")")
        #expect(try PrecisionScenario.named("dino-grad-overflow")!.run(mode: .fp16, lossScale: 16384).firstNonFinite == nil,
                "GradScaler at 2^14 should remove the overflow")
        let lw = try PrecisionScenario.named("edm-loss-weight-fp16")!.run(mode: .pureFP16)
        #expect(lw.firstNonFinite?.tensor == "loss.generative", "edm-loss-weight-fp16 in pure fp16 first goes non-finite elsewhere than loss.generative: \(lw.firstNonFinite?.description ?? "none")")
        #expect(try PrecisionScenario.named("edm-loss-weight-fp16")!.run(mode: .fp16, lossScale: 32768).firstNonFinite == nil,
                "float32 loss weighting (autocast) should keep L_G finite")
        let att = try PrecisionScenario.named("attention-logit-overflow")!.run(mode: .fp16)
        #expect(att.firstNonFinite?.tensor == "student.enc.block.0.attn.logits", "attention-logit-overflow in fp16 first goes non-finite elsewhere than block 0's logits: \(att.firstNonFinite?.description ?? "none")")
        #expect(att.firstNonFinite?.value == .infinity, "the attention logit is \(String(describing: att.firstNonFinite?.value)), not +inf")
    }

    @Test func cliScenarioOutput() throws {
        let (c1, out1, _) = try runOracle(["precision", "--scenario", "attention-logit-overflow", "--mode", "fast-fp16"])
        #expect(c1 == 1, "the attention-logit-overflow scenario in fp16 exited \(c1), not 1 (a value went non-finite):\n\(out1)")
        #expect(out1.split(separator: "\n").contains { $0.hasPrefix("first non-finite: student.enc.block.0.attn.logits") }, "the fp16 scenario's output does not name the first non-finite logit:\n\(out1)")
        let (c2, out2, _) = try runOracle(["precision", "--scenario", "attention-logit-overflow", "--mode", "fast"])
        #expect(c2 == 0 && !out2.contains("first non-finite:"), "the scenario in float32 exits non-zero or reports a non-finite value:\n\(out2)")
        let (c3, out3, _) = try runOracle(["precision", "--list-scenarios"])
        #expect(c3 == 0, "--list-scenarios exited \(c3)")
        let names = out3.split(separator: "\n").map { String($0.split(separator: " ")[0]) }
        #expect(names == PrecisionScenario.all.map(\.name) + [CollapseScenario.name], "--list-scenarios lists \(names)")
        // the quiet failure: reported with the scale and the flushed tensors, exit 1; silent in bf16
        let (c4, out4, _) = try runOracle(["precision", "--scenario", "gradscaler-collapse"])
        #expect(c4 == 1 && out4.contains("warning: quiet failure at step") && out4.contains("gradients zero or subnormal"), "gradscaler-collapse in fp16 does not exit 1 with its warning:\n\(out4)")
        let (c5, out5, _) = try runOracle(["precision", "--scenario", "gradscaler-collapse", "--mode", "fast-bf16"])
        #expect(c5 == 0 && out5.contains("no quiet failure"), "gradscaler-collapse in bf16 is not silent:\n\(out5)")
        // the sweep: the quiet-failure scale of the gradients, and the examples of --help exist
        let (c6, out6, _) = try runOracle(["precision", "--config", "tiny", "--points", "2", "--sample", "0"])
        #expect(c6 == 0 && out6.contains("quiet failure (GradScaler collapse): at a loss scale of 2^"), "the headroom sweep does not give the quiet-failure loss scale:\n\(out6)")
        let (_, help, _) = try runOracle(["precision", "--help"])
        for line in help.split(separator: "\n") where line.contains("--scenario ") && line.contains("oracle precision") {
            let name = line.split(separator: " ").drop { $0 != "--scenario" }.dropFirst().first.map(String.init) ?? ""
            #expect(PrecisionScenario.named(name) != nil || name == CollapseScenario.name, "--help names scenario '\(name)'")
        }
    }

    /// XL/2 at batch 1: the sweep's estimate fits a 24 GiB machine (measured peak RSS:
    /// README's headroom table), where a training model's does not; a batch that does not fit is refused in one line.
    @Test func xl2SweepFitsIn24GiB() throws {
        let xl = try #require(ModelConfig.named("XL/2"), "no preset XL/2")
        let gib = 1073741824.0
        #expect(xl.estimatedHeadroomSweepBytes(batch: 1) < 0.8 * 23.5 * gib, "\(xl.estimatedHeadroomSweepBytes(batch: 1) / gib) GiB")
        #expect(xl.estimatedStepBytes(batch: 1) > 23.5 * gib, "a full XL/2 training model fits 23.5 GiB by its estimate: \(xl.estimatedStepBytes(batch: 1) / gib) GiB")
        let (c, _, err) = try runOracle(["precision", "--config", "XL/2", "--batch", "4096"])
        #expect(c == 64 && err.contains("the headroom sweep at batch 4096 needs about"), "an XL/2 sweep at batch 4096 is not refused in one line naming its memory: exit \(c), \(err)")
    }

    @Test func gradScalerFollowsPyTorch() {
        var s = LossScaler(enabled: true)
        #expect(s.scale == 65536, "GradScaler does not start at 2^16")
        let first = s.update(foundNonFinite: true)
        #expect(!first && s.scale == 32768 && s.skippedSteps == 1, "back-off 0.5 and skip")
        var allStepped = true
        for _ in 0..<1999 { allStepped = s.update(foundNonFinite: false) && allStepped }
        #expect(allStepped && s.scale == 32768, "a clean step was skipped, or the scale moved before 2000 clean steps: \(s.scale)")
        let last = s.update(foundNonFinite: false)
        #expect(last && s.scale == 65536, "growth x2 after 2000 clean steps")
    }

    @Test func halfRounding() {
        #expect(roundFP16(1 + 0x1p-11) == 1, "ties to even")
        #expect(roundFP16(65520) == .infinity && roundFP16(65504) == 65504, "fp16's overflow edge: 65520 must round to inf, 65504 stay")
        #expect(roundBF16(1 + 0x1p-8) == 1 && roundBF16(1 + 0x1.8p-8) == 1 + 0x1p-7, "bf16 rounding: 1 + 2^-8 ties to even (1), 1 + 1.5 2^-8 rounds up")
        let big: Float = 3.0e38
        #expect(abs(roundBF16(big) - big) / big <= 0x1p-8, "bf16 keeps float32's range")
        #expect(roundBF16(.nan).isNaN, "bf16 rounding of NaN is not NaN")
    }

    /// The lean sweep (a forward-and-backward-only model loaded tensor by tensor, what lets XL/2
    /// run in 24 GiB) records the same statistics, bit for bit, as the sweep over a full model
    /// built from `SeededSetup.make`.
    @Test func leanSweepMatchesTheFullModelSweep() throws {
        let cfg = ModelConfig.tiny
        let s = SeededSetup.make(cfg, seed: 4, batch: 2, maskRatio: cfg.maskRatio, sampleSteps: nil)
        for mode in [FastPrecision.fp32, .pureFP16] {
            let a = try HeadroomSweep.run(s, mode: mode, sigmas: [0.01, 3], lossScale: 1024, samplerSteps: 3)
            let b = try HeadroomSweep.run(cfg, seed: 4, batch: 2, maskRatio: cfg.maskRatio, mode: mode, sigmas: [0.01, 3],
                                          lossScale: 1024, samplerSteps: 3)
            #expect(a.count == b.count, "\(mode): the lean sweep and the full model's give \(a.count) and \(b.count) points")
            for (x, y) in zip(a, b) {
                #expect(x.entries.map(\.name) == y.entries.map(\.name), "\(mode): the lean sweep and the full model's name other tensors")
                for (e, f) in zip(x.entries, y.entries) {
                    #expect(e.maxAbs.bitPattern == f.maxAbs.bitPattern && e.nonZero == f.nonZero && e.belowNormal == f.belowNormal
                            && e.exponents == f.exponents, "\(mode) \(x.phase) sigma \(x.sigma) \(e.name): \(e.maxAbs) vs \(f.maxAbs)")
                }
            }
        }
    }

    /// quietScale against counting directly: for each power-of-two scale 2^j, whether more than
    /// half of the non-zero values times 2^j / recorded fall below the smallest normal.
    @Test func quietScaleIsTheLargestScaleThatFlushesHalf() {
        var rng = SeededRandom(seed: 9)
        for trial in 0..<20 {
            let n = 1 + trial * 7
            var v = (0..<n).map { _ in Float(rng.normal() * pow(2, Double(Int(rng.next() % 40)) - 30)) }
            if trial % 3 == 0 { v += [0, 0] }
            let m = Monitor()
            m.minNormal = 6.103515625e-05
            let recorded: Float = 1024
            v.withUnsafeBufferPointer { m.record("g", $0.baseAddress!, v.count) }
            let e = m.entries["g"]!
            func flushesHalf(_ j: Int) -> Bool {
                let nz = v.filter { $0 != 0 }
                let below = nz.filter { Double(abs($0)) * pow(2, Double(j)) / Double(recorded) < Double(m.minNormal) }.count
                return 2 * below > nz.count
            }
            let want = (-200...200).reversed().first(where: flushesHalf).map { pow(2, Double($0)) }
            #expect(e.quietScale(recorded: recorded, minNormal: m.minNormal) == want, "trial \(trial)")
        }
    }

    @Test func headroomSweepRecordsEveryTensor() throws {
        let s = SeededSetup.make(.tiny, seed: 2, batch: 2, maskRatio: 0.25, sampleSteps: nil)
        let rows = try HeadroomSweep.run(s, mode: .fp32, sigmas: [0.002, 1, 80], lossScale: 65536, samplerSteps: 3)
        #expect(rows.count == 3 + 3, "3 training sigmas + 3 sampler steps, got \(rows.count) rows")
        for r in rows {
            #expect(r.entries.contains { $0.name == "student.enc.block.0.attn.logits" }, "sigma \(r.sigma): logits not recorded")
            #expect(r.entries.allSatisfy { $0.nonFinite == 0 }, "float32 run went non-finite at sigma \(r.sigma)")
        }
        // the scaled head gradient at batch 2 exceeds fp16's range (the dino-grad-overflow scenario)
        let d = rows[0].entries.first { $0.name.hasPrefix("d student.head.out") }
        #expect(d.map { $0.headroomBits(65504) < 0 } == true, "d head.out max \(d?.maxAbs ?? -1)")
    }
}
