import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast
import SDDiTReference

/// What `oracle regress record` runs. Two presets:
///   quick     tiny config: every fast mode against the float64 reference (seeded setup,
///             training step + 5-step sampler), every fixture in fixtures/ against ref and
///             fast, directional gradient checks of the reference, tiny timings
///   standard  quick + SD-DiT-S/2 at batch 1, every fast mode against the reference (its
///             float64 step takes about 5 s), and S/2 batch-8 timings as `oracle bench` runs
///             them (about half of the battery's 1.5 minutes)
public struct RegressBatteryOptions: Sendable {
    public var battery = "quick"
    public var fixturesDir = "fixtures"
    /// Timed repeats of each tiny timing (median and half range recorded).
    public var reps = 7
    /// Timed repeats of each S/2 timing (standard battery).
    public var s2Reps = 3
    public var seed: UInt64 = 0
    public var threads = 2
    public init() {}
    public static let batteries = ["quick", "standard"]
}

public struct RegressBatteryResult: Sendable {
    public var metrics: [String: RegressMetric] = [:]
    public var settings: [String: String] = [:]
    public var notes: [String] = []
    /// (component, seconds) in the order run.
    public var phases: [(String, Double)] = []
}

public enum RegressBattery {
    /// The fast modes compared with the reference.
    public static let modes: [Backend] = [.fast, .fastFP16, .fastBF16, .fastFP16Pure, .fastBF16Pure]

    public static func run(_ o: RegressBatteryOptions, progress: (String) -> Void = { _ in }) throws -> RegressBatteryResult {
        guard RegressBatteryOptions.batteries.contains(o.battery) else {
            throw RegressError("unknown battery '\(o.battery)'; expected one of: \(RegressBatteryOptions.batteries.joined(separator: ", "))")
        }
        FastThreads.setWorkers(o.threads)
        var r = RegressBatteryResult()
        if let raw = KernelPerturbation.rawValue {
            guard let p = KernelPerturbation.setting else {
                throw RegressError("SDDIT_ORACLE_PERTURB='\(raw)' is malformed; expected gelu:<size> or layernorm:<size>")
            }
            r.notes.append("PERTURBED: SDDIT_ORACLE_PERTURB=\(raw) (fast-path \(p.kernel) output x (1 + \(p.size))): a verification run, not a measurement of the code")
        }
        r.settings = [
            "battery": o.battery, "seed": "\(o.seed)", "threads": "\(o.threads)",
            "errors": "value = max rel |a - e| / (|e| + atol/rtol) per tensor under oracle diff's rule (Tolerances.swift); e = the float64 reference or fixture",
            "tiny": "tiny config, batch 2, mask ratio 0.2, 5-step Heun sampler, seeded setup (DECISIONS 7)",
            "gradcheck": "reference, tiny, batch 2, mask 0.5: 5-point central difference of L(theta + t v), h = 1e-4, per trainable tensor a seeded unit direction v, plus one over all; rel = |a - n| / (|n| + 1e-9/1e-7)",
            "timing": "tiny: median of \(o.reps) runs (each the mean of an inner loop) after warm-up; S/2 (standard): batch 8, median of \(o.s2Reps) after 1 warm-up, as oracle bench",
        ]
        func phase(_ name: String, _ body: () throws -> Void) rethrows {
            progress("  \(name) ...")
            let t0 = BLASInfo.now()
            try body()
            let dt = BLASInfo.now() - t0
            r.phases.append((name, dt))
            progress(String(format: "  %@: %.1f s", name, dt))
        }

        // 1. tiny: every fast mode against the reference on one seeded setup
        let tiny = ModelConfig.tiny
        try phase("tiny: fast modes vs ref") {
            let setup = SeededSetup.make(tiny, seed: o.seed, batch: 2, maskRatio: tiny.maskRatio, sampleSteps: 5)
            let ref = try Backend.ref.run(setup)
            for m in modes {
                let (n, bad) = compare(try m.run(setup), ref, setup: setup, cfg: tiny, prefix: "error/tiny/\(m.rawValue)/", into: &r.metrics)
                if bad > 0 { r.notes.append("tiny \(m.rawValue): \(bad) of \(n) tensors outside the diff tolerance") }
            }
        }
        // 2. fixtures: each against the reference and the fast path
        try phase("fixtures vs ref, fast") {
            let dir = URL(fileURLWithPath: o.fixturesDir)
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".h5") }.sorted()
            if files.isEmpty { r.notes.append("no fixtures found in '\(o.fixturesDir)'") }
            for f in files {
                for b in [Backend.ref, .fast] {
                    let rep = try DiffEngine.run(a: .file(dir.appendingPathComponent(f).path), b: .backend(b), options: DiffOptions())
                    let stem = String(f.dropLast(3))
                    for (i, c) in rep.comparisons.enumerated() { r.metrics["error/fixture/\(stem)/\(b.rawValue)/\(c.name)"] = metric(c, order: i) }
                    if rep.failed > 0 { r.notes.append("fixture \(f) vs \(b.rawValue): \(rep.failed) tensors outside the diff tolerance") }
                    if !rep.onlyInA.isEmpty || !rep.onlyInB.isEmpty {
                        r.notes.append("fixture \(f) vs \(b.rawValue): \(rep.onlyInA.count + rep.onlyInB.count) datasets on one side only")
                    }
                }
            }
        }
        // 3. gradient checks of the reference
        try phase("gradcheck (reference, tiny)") { try gradcheck(tiny, into: &r.metrics) }
        // 4. tiny timings
        try phase("tiny timings") { try tinyTimings(o, into: &r.metrics) }

        if o.battery == "standard" {
            let s2 = ModelConfig.s2
            try phase("S/2 batch 1: fast modes vs ref") {
                let setup = SeededSetup.make(s2, seed: o.seed, batch: 1, maskRatio: s2.maskRatio, sampleSteps: nil)
                let t0 = BLASInfo.now()
                let ref = try Backend.ref.run(setup)
                let refS = BLASInfo.now() - t0
                r.metrics["timing/S2/ref/batch1_step_with_activations_ms"] = RegressMetric.timing([refS * 1000])
                progress(String(format: "    float64 reference, S/2 batch 1 step: %.0f s", refS))
                for m in modes {
                    let t1 = BLASInfo.now()
                    let run = try m.run(setup)
                    let t2 = BLASInfo.now()
                    let (n, bad) = compare(run, ref, setup: setup, cfg: s2, prefix: "error/S2/\(m.rawValue)/", into: &r.metrics)
                    progress(String(format: "    %@: step %.1f s, %d verdicts %.1f s", m.rawValue, t2 - t1, n, BLASInfo.now() - t2))
                    if bad > 0 { r.notes.append("S/2 \(m.rawValue): \(bad) of \(n) tensors outside the diff tolerance") }
                }
            }
            try phase("S/2 timings (batch 8, as oracle bench)") { try s2Timings(o, into: &r.metrics) }
        }
        return r
    }

    /// One metric per dataset present on both sides, in DatasetOrder (forward order).
    static func compare(_ a: [String: NamedTensor], _ ref: [String: NamedTensor], setup: RunSetup, cfg: ModelConfig, prefix: String,
                        into m: inout [String: RegressMetric]) -> (Int, Int) {
        let paths = DatasetOrder.sorted(Array(Set(a.keys).intersection(ref.keys)), cfg)
        let ctx = AfterStepContext(cfg, before: setupDatasets(setup).floats, sideA: a, sideB: ref)
        // each dataset's verdict on its own (pure functions of the two tensors and the context),
        // spread over the cores; the metrics are then filed in order
        let out = UnsafeMutableBufferPointer<Comparison>.allocate(capacity: paths.count)
        defer { out.deinitialize().deallocate() }
        let box = UncheckedOutput(out)
        DispatchQueue.concurrentPerform(iterations: paths.count) { i in
            let p = paths[i]
            (box.buffer.baseAddress! + i).initialize(to: DiffEngine.verdict(p, a[p]!, ref[p]!, ctx, lr: cfg.lr))
        }
        var bad = 0
        for (i, p) in paths.enumerated() {
            if !out[i].passed { bad += 1 }
            m[prefix + p] = metric(out[i], order: i)
        }
        return (paths.count, bad)
    }

    /// The verdicts' slots, each written by exactly one task.
    private struct UncheckedOutput: @unchecked Sendable {
        let buffer: UnsafeMutableBufferPointer<Comparison>
        init(_ b: UnsafeMutableBufferPointer<Comparison>) { buffer = b }
    }

    static func metric(_ c: Comparison, order: Int) -> RegressMetric {
        let broken = c.nonFinite != nil || c.shapeMismatch
        let afterParams = c.name.hasPrefix("after_step/params/") || c.name.hasPrefix("after_step/teacher/")
        return RegressMetric(value: broken ? .infinity : round4(c.maxRel), maxAbs: broken ? .infinity : round4(c.maxAbs),
                             tol: c.tolerance.rtol, pass: c.passed, order: order,
                             noiseAbs: afterParams ? c.tolerance.atolAbs : nil)
    }

    // MARK: gradient checks

    public static let gradRtol = 1e-7, gradAtol = 1e-9

    /// Directional derivatives of the reference's total loss (as ModelGradientTests): per
    /// trainable tensor a seeded unit direction, and one direction over every parameter.
    static func gradcheck(_ cfg: ModelConfig, into m: inout [String: RegressMetric]) throws {
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 7)
        let Q: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 8)
        var TP = P.subset(cfg.teacherParameters)
        for s in cfg.teacherParameters where !s.frozen {
            for i in 0..<TP[s.key].count { TP[s.key].data[i] += 0.1 * Q[s.key].data[i] }
        }
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: 2, maskRatio: 0.5, seed: 9)
        func loss(_ p: Parameters<Double>) -> Double {
            (try? Objective.run(cfg, student: p, teacher: TP, inputs: I, gradients: false, recordActivations: false))?
                .losses[LossName.total] ?? .nan
        }
        let g = try Objective.run(cfg, student: P, teacher: TP, inputs: I, recordActivations: false).grads
        let h = 1e-4
        func check(_ name: String, _ order: Int, _ dir: [String: [Double]]) {
            // summed in sorted key order: Dictionary order changes from process to process, and
            // with it the rounding of the all-parameter sum
            let analytic = dir.keys.sorted().reduce(0.0) { acc, k in acc + zip(g[k]!.data, dir[k]!).reduce(0) { $0 + $1.0 * $1.1 } }
            func at(_ t: Double) -> Double {
                var p = P
                for (k, v) in dir { for i in 0..<v.count { p[k].data[i] += t * v[i] } }
                return loss(p)
            }
            let num = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
            let err = abs(analytic - num), rel = err / (abs(num) + gradAtol / gradRtol)
            m["gradcheck/tiny/mask0.5/" + name] = RegressMetric(value: round4(rel.isFinite ? rel : .infinity), maxAbs: round4(err.isFinite ? err : .infinity),
                                                                tol: gradRtol, pass: err <= gradAtol + gradRtol * abs(num), order: order)
        }
        var rng = SeededRandom(seed: 11)
        var all: [String: [Double]] = [:]
        for (j, s) in cfg.trainableParameters.enumerated() {
            var v = rng.normals(s.count)
            let nv = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            v = v.map { $0 / nv }
            all[s.key] = v
            check(s.key, j, [s.key: v])
        }
        check("all-parameters", cfg.trainableParameters.count, all)
    }

    // MARK: timings

    /// Runs `body` after `warmup` runs; each timed run is the mean over `inner` calls (ms).
    static func time(reps: Int, warmup: Int, inner: Int = 1, _ body: () throws -> Void) rethrows -> [Double] {
        for _ in 0..<warmup { try body() }
        var out: [Double] = []
        for _ in 0..<reps {
            let t0 = BLASInfo.now()
            for _ in 0..<inner { try body() }
            out.append((BLASInfo.now() - t0) * 1000 / Double(inner))
        }
        return out
    }

    /// The timing cases' setup at batch 8: seeded random parameters, one step's inputs (also as
    /// the fast path's), a denoiser input x ~ N(0, 2^2) and the generator that drew it.
    static func timingSetup(_ cfg: ModelConfig, _ seed: UInt64)
        -> (Parameters<Double>, StepInputs<Double>, FastStepInputs, [Double], SeededRandom) {
        let batch = 8
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: seed)
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: cfg.maskRatio, seed: seed &+ 2)
        let fi = FastStepInputs(x0: I.x0.data, labels: I.labels, sigmaS: I.sigmaS, noiseS: I.noiseS.data, noiseT: I.noiseT.data, mask: I.mask)
        var rng = SeededRandom(seed: seed &+ 5)
        let x = rng.normals(batch * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: 2)
        return (P, I, fi, x, rng)
    }

    static func tinyTimings(_ o: RegressBatteryOptions, into m: inout [String: RegressMetric]) throws {
        let cfg = ModelConfig.tiny
        let (P, I, fi, x, _) = timingSetup(cfg, o.seed)
        for b in [Backend.fast, .fastFP16, .fastBF16] {
            let prec = b.fastPrecision!
            let model = FastModel(cfg, precision: prec, student: P.tensors, teacher: P.subset(cfg.teacherParameters).tensors,
                                  centerCls: I.centerCls.data, centerPatch: I.centerPatch.data)
            m["timing/tiny/\(b.rawValue)/train_step_ms"] = .timing(try time(reps: o.reps, warmup: 3, inner: 20) { _ = try model.trainStep(fi) })
            let den = FastModel(cfg, precision: prec, student: P.tensors, teacher: nil)
            m["timing/tiny/\(b.rawValue)/denoise_ms"] = .timing(try time(reps: o.reps, warmup: 3, inner: 50) { _ = try den.denoise(x, sigma: 2, labels: I.labels) })
        }
        // the float64 reference: one training step as `oracle diff` runs it (forward with SPEC's
        // activations recorded, backward, AdamW, EMA, centers), batch 8, the state carried on
        var state = TrainingState(cfg, student: P, centerCls: I.centerCls, centerPatch: I.centerPatch)
        m["timing/tiny/ref/train_step_ms"] = .timing(try time(reps: max(3, o.reps / 2), warmup: 1) { _ = try state.step(cfg, inputs: I) })
    }

    static func s2Timings(_ o: RegressBatteryOptions, into m: inout [String: RegressMetric]) throws {
        let cfg = ModelConfig.s2, batch = 8
        let (P, I, fi, x, rng0) = timingSetup(cfg, o.seed)
        var rng = rng0
        let labels = (0..<batch).map { _ in Int(rng.next() % UInt64(cfg.numClasses)) }
        for b in [Backend.fast, .fastBF16] {
            let model = FastModel(cfg, precision: b.fastPrecision!, student: P.tensors, teacher: P.subset(cfg.teacherParameters).tensors,
                                  centerCls: I.centerCls.data, centerPatch: I.centerPatch.data)
            m["timing/S2/\(b.rawValue)/sddit-s2-train_ms"] = .timing(try time(reps: o.s2Reps, warmup: 1) { _ = try model.trainStep(fi) })
        }
        let den = FastModel(cfg, precision: .fp32, student: P.tensors, teacher: nil)
        m["timing/S2/fast/sddit-s2-denoise_ms"] = .timing(try time(reps: o.s2Reps, warmup: 1) { _ = try den.denoise(x, sigma: 2, labels: labels) })
    }
}
