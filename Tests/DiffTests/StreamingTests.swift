import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast
import SDDiTReference

// The streamed reference (each part's gradients stepped and dropped once its backward is
// done) and the streamed diff (a file's results read on demand, the reference compared as it
// goes) are how XL/2 fits in 24 GiB. They must give exactly what the whole runs give.
@Suite("Streaming: the reference and the diff at real size")
struct StreamingTests {
    static func bits(_ t: NamedTensor) -> [UInt64] { t.values.map(\.bitPattern) }

    /// `ReferenceBackend.stream` against the multi-step state machine (`TrainingState.step`:
    /// every gradient held, AdamW over the whole dictionary, then the EMA): bit for bit, each
    /// path handed over once, a key's gradient before its update.
    @Test(arguments: [(UInt64(0), 0.0), (UInt64(3), 0.5)])
    func streamEqualsTheTrainingStep(seed: UInt64, maskRatio: Double) throws {
        let cfg = ModelConfig.tiny
        let s = SeededSetup.make(cfg, seed: seed, batch: 2, maskRatio: maskRatio, sampleSteps: nil)
        var seen: [String] = []
        var got: [String: NamedTensor] = [:]
        try ReferenceBackend.stream(s, as: Double.self) { p, d in seen.append(p); got[p] = d }
        #expect(Set(seen).count == seen.count, "a path handed over twice")
        for spec in cfg.studentParameters where !spec.frozen {
            let g = seen.firstIndex(of: "grads/" + spec.key), u = seen.firstIndex(of: "after_step/params/" + spec.key)
            #expect(g != nil && u != nil && g! < u!, "\(spec.key): gradient after its update")
        }
        var state = TrainingState(cfg, student: s.student, teacher: s.teacher, centerCls: s.inputs!.centerCls, centerPatch: s.inputs!.centerPatch)
        let r = try state.step(cfg, inputs: s.inputs!)
        var expected: [String: [Double]] = [:]
        for (k, v) in r.grads { expected["grads/" + k] = v.data }
        for (k, v) in state.student.tensors { expected["after_step/params/" + k] = v.data }
        for (k, v) in state.teacher.tensors { expected["after_step/teacher/" + k] = v.data }
        for (k, v) in r.activations { expected["activations/" + k] = v.data }
        for (k, v) in r.losses { expected["losses/" + k] = [v] }
        expected["after_step/center_cls"] = state.centerCls.data
        expected["after_step/center_patch"] = state.centerPatch.data
        var differing: [String] = []
        for (p, e) in expected where got[p].map(Self.bits) != e.map(\.bitPattern) { differing.append(p) }
        #expect(differing.isEmpty, "streamed step differs from TrainingState.step in \(differing.sorted().prefix(5))")
        let extra = Set(got.keys).subtracting(expected.keys).subtracting(["params/pos_embed", "params/decoder_pos_embed"])
        #expect(extra.isEmpty, "streamed paths the step does not make: \(extra.sorted())")
    }

    /// A file read with its results on demand gives every dataset exactly as a whole read does,
    /// and holds only the setup (and /params) in memory.
    @Test func onDemandReadEqualsTheWholeRead() throws {
        for f in ["public_train_tiny.h5", "public_sampler_cfg_tiny.h5", "golden_tiny.h5"] {
            let path = fixture(f)
            let whole = try ExchangeFile.read(path), lazy = try ExchangeFile.read(path, resultsOnDemand: true)
            #expect(Set(lazy.index.keys) == Set(whole.datasets.keys), "\(f): the on-demand index and the whole read name different datasets")
            #expect(lazy.datasets.keys.allSatisfy { ExchangeFile.isSetup($0) || $0.hasPrefix("params/") || $0 == "sampler/sigmas" || lazy.integers[$0] != nil }, "\(f): the on-demand read holds a result dataset in memory")
            #expect(lazy.datasets.count < whole.datasets.count, "\(f): the on-demand read holds every dataset in memory")
            for (p, d) in whole.datasets {
                let l = try #require(try lazy.dataset(p), "\(f): /\(p) is missing from the on-demand read")
                #expect(l.shape == d.shape && l.precision == d.precision && Self.bits(l) == Self.bits(d), "\(f): /\(p) read on demand differs from the whole read (shape, precision or bits)")
                #expect(lazy.index[p]!.shape == d.shape, "\(f): the index's shape of /\(p) differs from the dataset's")
            }
            #expect(try lazy.dataset("activations/no.such") == nil, "\(f): a dataset the file does not have is not nil")
        }
    }

    /// The streamed diff against the verdicts made the plain way: both sides whole in memory,
    /// every shared dataset judged with the whole sides as the after-step context. Same
    /// comparisons, same numbers, same verdicts; on a float64 file, a float32 file (calibrated:
    /// the fast path runs for it), and one that left gradients out.
    @Test(arguments: ["ref", "fast", "fast-nograds"])
    func streamedDiffEqualsWholeVerdicts(kind: String) throws {
        let s = SeededSetup.make(.tiny, seed: 6, batch: 2, maskRatio: 0.25, sampleSteps: 3, cfgScale: 1.5)
        var res = try (kind == "ref" ? Backend.ref : Backend.fast).run(s)
        if kind == "fast-nograds" { res = res.filter { !$0.key.hasPrefix("grads/") } }
        let path = try writeExchangeFile(s, res, params: kind == "ref" ? nil : .float32, name: "streamed-\(kind)")
        let report = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())

        let file = try ExchangeFile.read(path), setup = try file.runSetup()
        let full = try Backend.ref.run(setup)
        let groups = Set(file.datasets.keys.filter { !ExchangeFile.isSetup($0) }.map { String($0.split(separator: "/")[0]) })
        let before = file.datasets.filter { $0.key.hasPrefix("params/") || $0.key.hasPrefix("teacher/") }
        let ctx = AfterStepContext(file.config, before: before, sideA: file.datasets, sideB: full)
        let tablesAs = file.datasets.filter { !ExchangeFile.isSetup($0.key) && !$0.key.hasPrefix("params/") }.map(\.value.precision).min()!
        var expected: [String: Comparison] = [:]
        for (p, var x) in file.datasets where !ExchangeFile.isSetup(p) {
            guard let y = full[p] else { continue }
            if p.hasPrefix("params/") { x.precision = min(x.precision, tablesAs) }
            expected[p] = DiffEngine.verdict(p, x, y, ctx, lr: file.config.lr)
        }
        #expect(report.comparisons.map(\.name) == DatasetOrder.sorted(Array(expected.keys), file.config), "\(kind): the streamed diff compares other datasets, or in another order, than the whole-side verdicts")
        for c in report.comparisons {
            let e = try #require(expected[c.name], "\(kind): \(c.name) has no whole-side verdict")
            #expect(c.passed == e.passed && c.maxAbs.bitPattern == e.maxAbs.bitPattern && c.maxRel.bitPattern == e.maxRel.bitPattern
                    && c.bad == e.bad && c.tolerance.description == e.tolerance.description, "\(kind): \(c.name) differs from the whole-side verdict")
        }
        let computedGroups = Set(full.keys.map { String($0.split(separator: "/")[0]) })
        #expect(report.notRecorded == ["activations", "losses", "grads", "after_step", "sampler"].filter { computedGroups.contains($0) && !groups.contains($0) }, "\(kind): the groups said not recorded are \(report.notRecorded)")
        let passed = report.passed
        #expect(passed, "\(kind): a correct run failed: \(report.lines().suffix(4))")
        if kind != "ref" { #expect(report.comparisons.contains { $0.calibration != nil }, "a float32 file was not calibrated") }
    }

    /// XL/2: the reference's streamed step at batch 2 fits this machine class (24 GiB, 80% of it)
    /// by its estimate, which counts the whole setup in Double, while a step that held every
    /// gradient does not. The fast path's streamed step (float32 student, teacher and
    /// gradients never all at once, beside the Double setup) fits at batch 2 too; with its
    /// results held as Double it does not (a calibration run then goes to a temporary file).
    @Test func xl2FitsTheReferenceEstimate() {
        let xl = ModelConfig.xl2, gib = 1073741824.0, V = xl.visibleCount(maskRatio: 0.2)
        let ref = xl.estimatedReferenceStepBytes(batch: 2, visible: V, scalarBytes: 8)
        let setup = 8 * Double(xl.parameterCounts.total + xl.parameterCounts.encoder + xl.parameterCounts.head)
        #expect(ref > setup && ref < 0.8 * 24 * gib, "XL/2 batch 2: \(ref / gib) GiB")
        #expect(ref + 8 * Double(xl.parameterCounts.trainable) > 0.8 * 24 * gib, "XL/2 batch 2 holding every gradient fits by the estimate: \((ref + 8 * Double(xl.parameterCounts.trainable)) / gib) GiB")
        let fast = Backend.fast.estimatedStepBytes(xl, batch: 2, visible: V)
        #expect(fast > setup + 4 * 2 * Double(xl.parameterCounts.total) && fast < 0.8 * 24 * gib, "XL/2 batch 2 fast: \(fast / gib) GiB")
        let held: Double = FastBackend.estimatedResultsBytes(xl, batch: 2, visible: V, samplerSteps: nil)
        #expect(held + fast > 0.8 * 24 * gib, "XL/2 batch 2 fast with its results held: \((held + fast) / gib) GiB")
    }

    /// Where the fast path's step does not fit (a memory set below its estimate), a float32
    /// file is judged by the float32 rule alone and the report says so (shown against a
    /// float64 file, the setup's: the streamed fast step needs less than the reference's at
    /// tiny, so no memory refuses it and not the reference);
    /// where the reference itself does not fit, the diff refuses before allocating.
    @Test func calibrationThatDoesNotFitIsSkippedAndSaid() throws {
        let s = SeededSetup.make(.tiny, seed: 8, batch: 2, maskRatio: 0.25, sampleSteps: nil)
        let path = try writeExchangeFile(s, try Backend.fast.run(s), params: .float32, name: "skip-calibration")
        let refPath = try writeExchangeFile(s, try Backend.ref.run(s), params: nil, name: "skip-calibration-ref")   // the exact setup
        let V = s.inputs!.mask[0].filter { $0 == 0 }.count
        let ref = Backend.ref.estimatedStepBytes(.tiny, batch: 2, visible: V), fast = Backend.fast.estimatedStepBytes(.tiny, batch: 2, visible: V)
        var o = DiffOptions()
        o.memory = fast / 2 / 0.8
        let r = try DiffEngine.run(a: .file(refPath), b: .file(path), options: o)
        #expect(r.notes.count == 1 && r.notes[0].hasPrefix("calibration skipped: ") && r.notes[0].contains("fast"), "the skipped calibration is not said in one note naming the fast path: \(r.notes)")
        #expect(r.comparisons.allSatisfy { $0.calibration == nil } && r.comparisons.count > 100, "calibrated tensors or too few comparisons where the calibration was skipped (\(r.comparisons.count) compared)")
        #expect(r.lines().contains(r.notes[0]) && (r.json["notes"] as? [String]) == r.notes, "the skipped-calibration note is missing from the report lines or the JSON")
        // an uncalibrated verdict fails unless accepted (--uncalibrated)
        #expect(!r.passed && r.uncalibrated, "an uncalibrated verdict passes or is not marked uncalibrated: \(r.summary)")
        #expect(r.lines().contains { $0.hasPrefix("FAIL the calibrated verdict could not run") }, "the report does not fail the uncalibrated verdict in a line of its own")
        o.allowUncalibrated = true
        let accepted = try DiffEngine.run(a: .file(refPath), b: .file(path), options: o)
        #expect(accepted.passed, "--uncalibrated: \(accepted.summary)")
        o.allowUncalibrated = false
        let full = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())
        #expect(full.notes.isEmpty && full.comparisons.contains { $0.calibration != nil }, "with memory enough the float32 file is not calibrated, or has notes: \(full.notes)")
        o.memory = ref / 2 / 0.8
        #expect("where the reference does not fit, the diff does not refuse before allocating") { _ = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: o) } throws: { e in
            "\(e)".contains("ref: a training step at batch 2") && "\(e)".contains("refusing before allocating")
        }
    }
}
