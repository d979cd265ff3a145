import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast
import SDDiTReference

// Calibrated verdicts for float32 files (issue "Verdicts calibrated to the precision a run
// claims"): a subtle forward bug fails at the block where it starts, not downstream, while an
// independent correct float32 implementation passes.
@Suite("Calibrated float32 verdicts")
struct CalibrationTests {
    static func setup(seed: UInt64, sample: Bool = true) -> RunSetup {
        SeededSetup.make(.tiny, seed: seed, batch: 2, maskRatio: 0.25, sampleSteps: sample ? 3 : nil, cfgScale: seed % 2 == 0 ? 1.5 : nil)
    }

    /// A float32 exchange file: the setup (parameters rounded to float32, as a float32
    /// state_dict holds them, the fixed tables included) and the given float32 results.
    static func file(_ s: RunSetup, _ results: [String: NamedTensor], name: String) throws -> String {
        try writeExchangeFile(s, results, params: .float32, name: name)
    }

    static func diff(_ path: String) throws -> DiffReport {
        try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())
    }

    /// The reference's own code in Float (plain sequential loops, float32 throughout, the
    /// sampler state too): an implementation independent of the fast path. It passes on four
    /// seeds, under the float32 limit (`Calibration.limit`; measured ratios: docs/DECISIONS.md 26).
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func independentFloat32Passes(seed: UInt64) throws {
        let s = Self.setup(seed: seed)
        let path = try Self.file(s, try ReferenceBackend.run(s, as: Float.self), name: "ref32-\(seed)")
        let r = try Self.diff(path)
        for c in r.comparisons where !c.passed {
            Issue.record(Comment(rawValue: c.lines(labelA: r.labelA, labelB: r.labelB).joined(separator: "\n")))
        }
        #expect(r.passed, "seed \(seed): \(r.summary)")
        let cal = r.comparisons.compactMap(\.calibration)
        #expect(cal.count >= 80, "calibrated \(cal.count) tensors")
        let worst = r.comparisons.filter { $0.calibration != nil && !$0.name.hasPrefix("sampler/") }.max { $0.calibration!.ratio < $1.calibration!.ratio }
        print("independent float32, seed \(seed): worst calibrated ratio \(worst.map { "\($0.calibration!.ratio) in \($0.name)" } ?? "-")")
    }

    /// Exact GELU in encoder block 0 or 1, or LayerNorm eps 1e-5 in encoder block 0 (student
    /// and teacher): each stays inside the blanket float32 rule at its block, and fails there
    /// first, by calibration (measured ratios: docs/DECISIONS.md 26). Not asked: eps 1e-5 in
    /// block 1, where the inputs' variance is large and the change at that block may be within
    /// what an independent float32 run reaches, depending on the seed (26): it then fails first
    /// downstream (seed 1: teacher.head.cls).
    @Test(arguments: [("gelu", 0), ("gelu", 1), ("eps", 0)])
    func subtleForwardBugFailsWhereItStarts(_ kind: String, _ block: Int) throws {
        for seed in [1, 2] as [UInt64] {
            let s = Self.setup(seed: seed, sample: false)
            let v = kind == "gelu" ? FastVariant(exactGELUBlock: block) : FastVariant(layerNormEpsBlock: block, layerNormEps: 1e-5)
            let path = try Self.file(s, try FastBackend.run(s.fastSetup, precision: .fp32, variant: v), name: "\(kind)\(block)-\(seed)")
            let r = try Self.diff(path)
            let first = r.comparisons.first { !$0.passed }
            let target = "activations/student.enc.block.\(block)"
            #expect(first?.name == target, "\(kind) in block \(block), seed \(seed): first FAIL \(first?.name ?? "none"), expected \(target)")
            if let c = r.comparisons.first(where: { $0.name == target }) {
                #expect(c.bad == 0, "\(target) should be inside the blanket rule (only the calibration catches it): \(c.bad) bad")
                #expect(c.calibrationFailed, "\(target) is not failed by its calibration: \(c.lines(labelA: r.labelA, labelB: r.labelB).joined(separator: " | "))")
                print("\(kind) in block \(block), seed \(seed): " + c.lines(labelA: r.labelA, labelB: r.labelB)[0])
            }
            // the block before the planted one is still clean
            if block > 0 {
                let before = r.comparisons.first { $0.name == "activations/student.enc.block.\(block - 1)" }
                #expect(before?.passed == true, "\(kind) in block \(block) seed \(seed): block \(block - 1), before the bug, does not pass")
            }
        }
    }

    /// The fast path's own clean float32 file passes at ratio 1 (it is the calibration run; the
    /// sampler states, kept in float64 and stored in float32, within 1%).
    @Test func fastFileIsAtItsOwnLevel() throws {
        let s = Self.setup(seed: 7)
        let r = try Self.diff(try Self.file(s, try FastBackend.run(s.fastSetup, precision: .fp32), name: "fast-7"))
        #expect(r.passed, "the fast path's own float32 file fails: \(r.summary)")
        let above = r.comparisons.filter { ($0.calibration?.ratio ?? 0) > ($0.name.hasPrefix("sampler/") ? 1.01 : 1 + 1e-12) }
        #expect(above.isEmpty, "the fast path's own file is above its own level: \(above.map { "\($0.name) x\($0.calibration!.ratio)" }.prefix(5))")
    }
}

// What a file does not record is said plainly; a gradient for a fixed parameter is a bug.
@Suite("Partial and extra data")
struct PartialDataTests {
    static func fastFile(_ seed: UInt64, name: String, edit: (inout [String: NamedTensor]) -> Void = { _ in },
                         paramsAsFloat64: Bool = false) throws -> String {
        let s = CalibrationTests.setup(seed: seed, sample: false)
        var res = try FastBackend.run(s.fastSetup, precision: .fp32)
        edit(&res)
        // tools/sddit_h5.py stores a float32 state_dict as float64 datasets holding float32 values
        return try writeExchangeFile(s, res, params: paramsAsFloat64 ? .float64 : .float32, name: name)
    }

    static func diff(_ path: String, allowMissing: Bool = false) throws -> DiffReport {
        var o = DiffOptions()
        o.allowMissing = allowMissing
        return try DiffEngine.run(a: .file(path), b: .backend(.ref), options: o)
    }

    /// A clean float32 run whose state_dict was stored as float64 (the documented tools path):
    /// its fixed tables are judged as float32, and it passes.
    @Test func float32RunWithFloat64ParamsPasses() throws {
        let r = try Self.diff(try Self.fastFile(11, name: "tools-style", paramsAsFloat64: true))
        #expect(r.passed, "a tools-style file (float64 parameters, float32 results) fails:\n\(r.lines().suffix(6).joined(separator: "\n"))")
        let pe = r.comparisons.first { $0.name == "params/pos_embed" }
        #expect(pe?.precisionA == .float32 && pe?.passed == true, "the float32 model's pos_embed is not judged as float32 or fails: \(pe.map { $0.lines(labelA: "a", labelB: "b")[0] } ?? "no pos_embed")")
    }

    /// An activations-only dump passes (nothing to accept), and the summary says what it did
    /// not record.
    @Test func activationsOnlyFileSaysWhatIsNotRecorded() throws {
        let path = try Self.fastFile(12, name: "acts-only") { $0 = $0.filter { $0.key.hasPrefix("activations/") || $0.key.hasPrefix("params/") } }
        let r = try Self.diff(path)
        #expect(r.passed, "an activations-only file fails: \(r.summary)")
        #expect(r.notRecorded == ["losses", "grads", "after_step"], "the groups said not recorded are \(r.notRecorded)")
        #expect(r.summary.hasSuffix("not recorded, not compared: losses, grads, after_step"), "the summary does not say what was not recorded: \(r.summary)")
    }

    /// A gradient for head.last_layer.weight_g (trained by mistake) fails as such, with or
    /// without --allow-missing, at its place in the order.
    @Test func gradientOfAFixedParameterFails() throws {
        let path = try Self.fastFile(13, name: "weight-g") { d in
            d["grads/head.last_layer.weight_g"] = NamedTensor(shape: [64, 1], values: Array(repeating: 1e-3, count: 64), precision: .float32)
        }
        for allow in [false, true] {
            let r = try Self.diff(path, allowMissing: allow)
            #expect(!r.passed && r.fixedTrained == ["grads/head.last_layer.weight_g"], "allow \(allow): \(r.summary)")
            let lines = r.lines()
            #expect(lines.contains { $0.contains("grads/head.last_layer.weight_g") && $0.contains("gradient recorded for a fixed parameter") }, "allow \(allow): no line says a gradient was recorded for the fixed weight_g: \(lines.prefix(4))")
        }
    }

    /// One-sided datasets print at their place in the comparison order, before later FAILs.
    @Test func oneSidedLinesInOrder() throws {
        let path = try Self.fastFile(14, name: "gap") { d in
            d["activations/student.enc.block.1"] = nil
            d["grads/blocks.0.mlp.fc1.weight"]!.values[3] += 0.1
        }
        let r = try Self.diff(path)
        let lines = r.lines()
        let gap = lines.firstIndex { $0 == "ONLY-IN-B /activations/student.enc.block.1" }
        let fail = lines.firstIndex { $0.hasPrefix("FAIL grads/blocks.0.mlp.fc1.weight") }
        #expect(gap != nil && fail != nil && gap! < fail!, "the missing activation is not reported before the failing gradient: \(lines.prefix(6))")
        #expect(!r.passed, "a file missing an activation, with a perturbed gradient, passes: \(r.summary)")
    }
}

// TF32: PyTorch runs convolutions (DiT's patch embedding) in TF32 on Ampere and later GPUs by
// default. Such a "float32" dump is named as TF32-like against the reference, passes against
// the fast-tf32 backend, and a real bug in it still fails there.
@Suite("TF32 dumps")
struct TF32Tests {
    static func tf32File(seed: UInt64, plant: ((inout [String: NamedTensor], RunSetup) -> Void)? = nil) throws -> String {
        let s = CalibrationTests.setup(seed: seed, sample: false)
        var res = try FastBackend.run(s.fastSetup, precision: .fp32, variant: FastVariant(tf32PatchEmbedding: true))
        plant?(&res, s)
        return try CalibrationTests.file(s, res, name: "tf32-\(seed)-\(plant == nil ? "clean" : "bug")")
    }

    @Test(arguments: [1, 2] as [UInt64])
    func tf32PatchEmbeddingIsNamedAndPassesAgainstFastTF32(seed: UInt64) throws {
        let path = try Self.tf32File(seed: seed)
        let r = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())
        let first = r.comparisons.first { !$0.passed }
        #expect(first?.name == "activations/student.tokens" && first?.calibrationFailed == true, "first FAIL \(first?.name ?? "none")")
        #expect(r.diagnosis.count == 1 && r.diagnosis[0].contains("TF32") && r.diagnosis[0].contains("--b fast-tf32"), "the diagnosis does not name TF32 and --b fast-tf32: \(r.diagnosis)")
        print("TF32 patch embedding vs ref, seed \(seed): " + (first.map { $0.lines(labelA: r.labelA, labelB: r.labelB)[0] } ?? "") + "\n" + r.diagnosis.joined())
        let t = try DiffEngine.run(a: .file(path), b: .backend(.fastTF32), options: DiffOptions())
        for c in t.comparisons where !c.passed { Issue.record(Comment(rawValue: c.lines(labelA: t.labelA, labelB: t.labelB).joined(separator: "\n"))) }
        #expect(t.passed, "vs fast-tf32: \(t.summary)")
    }

    /// A TF32 dump whose optimizer step is lr/10 fails against fast-tf32 (the file's own step is
    /// judged, although it is the more precise side there).
    @Test func realBugUnderTF32StillFails() throws {
        let path = try Self.tf32File(seed: 3) { res, s in
            for spec in s.config.studentParameters where !spec.frozen {
                let p0 = s.student[spec.key].data, g = res["grads/" + spec.key]!.values
                res["after_step/params/" + spec.key]!.values = zip(p0, g).map { Double(Float($0.0)) - s.config.lr / 10 * $0.1 / (abs($0.1) + 1e-8) }
            }
        }
        let t = try DiffEngine.run(a: .file(path), b: .backend(.fastTF32), options: DiffOptions())
        #expect(!t.passed, "a TF32 dump with an lr/10 step passes against fast-tf32: \(t.summary)")
        #expect(t.comparisons.first { !$0.passed }?.name.hasPrefix("after_step/params/") == true, "the first failure of the lr/10 step is not an after-step parameter: \(t.summary)")
    }
}
