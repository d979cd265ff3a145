import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast

// Calibrated verdicts in every precision the fast path emulates (docs/DECISIONS.md 42): a file
// judged in its mode (declared, asked for with --b fast-MODE, or seen in its values) fails
// first where a planted bug starts whenever the bug's effect there exceeds the mode's
// resolution; below it, the report states the detection floor. Clean twins pass on several
// seeds. A float32 file with a subtle bug is never diagnosed as a reduced-precision run.
@Suite("Calibrated verdicts in every mode")
struct ModeCalibrationTests {
    static let reduced: [PrecisionMode] = [.tf32, .tf32Conv, .fp16Autocast, .bf16Autocast, .fp16Pure, .bf16Pure]

    static func setup(seed: UInt64) -> RunSetup {
        SeededSetup.make(.tiny, seed: seed, batch: 2, maskRatio: seed % 2 == 0 ? 0.5 : 0.25, sampleSteps: nil)
    }

    /// A correct run in `mode` whose roundings fall elsewhere than the calibration run's: the
    /// fast path in that mode on the setup's inputs moved by one float32 ulp each (x0 and both
    /// noises), written with the setup's own inputs. The moved inputs change the truth by
    /// about float32's unit roundoff, far below every reduced mode's level.
    static func twin(_ s: RunSetup, _ mode: PrecisionMode, variant: FastVariant = FastVariant(), seed: UInt64) throws -> [String: NamedTensor] {
        var t = s
        var rng = SeededRandom(seed: seed &+ 99)
        func nudge(_ x: inout Tensor<Double>) {
            for i in 0..<x.count {
                let f = Float(x.data[i])
                x.data[i] = Double(rng.next() & 1 == 0 ? f.nextUp : f.nextDown)
            }
        }
        nudge(&t.inputs!.x0); nudge(&t.inputs!.noiseS); nudge(&t.inputs!.noiseT)
        var v = variant
        if mode == .tf32Conv { v.tf32PatchEmbedding = true }
        return try FastBackend.run(t.fastSetup, precision: mode.backend!.fastPrecision!, variant: v)
    }

    static func file(_ s: RunSetup, _ res: [String: NamedTensor], _ name: String, declare: PrecisionMode?) throws -> String {
        try writeExchangeFile(s, res, params: .float32, name: name, mode: declare)
    }

    static func diff(_ path: String, _ b: Backend) throws -> DiffReport {
        try DiffEngine.run(a: .file(path), b: .backend(b), options: DiffOptions())
    }

    static func failures(_ r: DiffReport) -> String {
        r.comparisons.filter { !$0.passed }.prefix(3).map { $0.lines(labelA: r.labelA, labelB: r.labelB)[0] }.joined(separator: "\n")
    }

    /// Clean twins pass against the reference (judged in their declared mode) and against
    /// their mode's backend, on three seeds; the worst calibrated ratio is printed (the
    /// limits' margin over it is docs/DECISIONS.md 42's subject).
    @Test(arguments: reduced)
    func cleanTwinsPass(_ mode: PrecisionMode) throws {
        var worst = (0.0, "")
        for seed in [1, 2, 3] as [UInt64] {
            let s = Self.setup(seed: seed)
            let path = try Self.file(s, try Self.twin(s, mode, seed: seed), "twin-\(mode)-\(seed)", declare: mode)
            for b in [Backend.ref, mode.backend!] {
                let r = try Self.diff(path, b), ok = r.passed
                #expect(ok, "\(mode) seed \(seed) vs \(b.rawValue): \(r.summary)\n\(Self.failures(r))")
                #expect(r.mode == mode.rawValue, "judged as \(r.mode ?? "nothing")")
                let cal = r.comparisons.compactMap { c in c.calibration.map { ($0.ratio, c.name) } }
                #expect(cal.count >= 80, "\(mode): only \(cal.count) tensors calibrated")
                if let w = cal.max(by: { $0.0 < $1.0 }), w.0 > worst.0, b == .ref { worst = w }
                if mode != .tf32Conv {
                    #expect(!r.floors.isEmpty, "\(mode) vs \(b.rawValue): a pass in a reduced mode states its detection floor")
                }
            }
        }
        print("clean twin \(mode): worst calibrated ratio x\(String(format: "%.2f", worst.0)) in \(worst.1) (limit x\(CalibrationLimits.limit(mode, path: worst.1)))")
    }

    /// A half-precision file that does not declare its mode is judged in the mode its values
    /// show: products (student.F, the head outputs) exact in the half type, gradients too in a
    /// pure mode.
    @Test(arguments: [PrecisionMode.fp16Autocast, .bf16Autocast, .fp16Pure, .bf16Pure])
    func undeclaredHalfFileIsJudgedInTheModeItsValuesShow(_ mode: PrecisionMode) throws {
        let s = Self.setup(seed: 4)
        let path = try Self.file(s, try Self.twin(s, mode, seed: 4), "undeclared-\(mode)", declare: nil)
        let r = try Self.diff(path, .ref)
        #expect(r.mode == mode.rawValue, "\(mode): judged as \(r.mode ?? "nothing") (\(r.modeSource ?? ""))")
        let ok = r.passed
        #expect(ok, "\(mode): an undeclared clean twin fails:\n\(r.summary)\n\(Self.failures(r))")
    }

    /// Planted bugs in each mode, against the reference and against the mode's backend: a
    /// bug whose effect where it starts exceeds the mode's resolution fails first there; one
    /// below it either passes with the floor stated or fails downstream with its start below
    /// the floor (said by the ratio there).
    @Test(arguments: reduced)
    func plantedBugsFailWhereTheyStart(_ mode: PrecisionMode) throws {
        let bugs: [(String, FastVariant, String, Bool)] = [
            // name, variant, where it starts, always above every reduced mode's resolution
            ("shift-scale:0", FastVariant(shiftScaleSwapBlock: 0), "activations/student.enc.block.0", true),
            ("no-sqrt-d:1", FastVariant(unscaledAttentionBlock: 1), "activations/student.enc.block.1", true),
            ("tau-swap", FastVariant(swapTemperatures: true), "losses/dis_cls", true),
            ("gelu-exact:0", FastVariant(exactGELUBlock: 0), "activations/student.enc.block.0", false),
            ("ln-eps:0", FastVariant(layerNormEpsBlock: 0, layerNormEps: 1e-5), "activations/student.enc.block.0", false),
        ]
        var table: [String] = []
        for (name, v, start, above) in bugs {
            let s = Self.setup(seed: 1)
            let path = try Self.file(s, try Self.twin(s, mode, variant: v, seed: 1), "bug-\(mode)-\(name)", declare: mode)
            for b in [Backend.ref, mode.backend!] {
                let r = try Self.diff(path, b)
                let first = r.comparisons.first { !$0.passed }
                let atStart = r.comparisons.first { $0.name == start }
                table.append("\(mode) \(name) vs \(b.rawValue): first FAIL \(first?.name ?? "none")"
                             + (atStart?.calibration.map { String(format: " (x%.3g at %@)", $0.ratio, start) } ?? ""))
                if above {
                    #expect(first?.name == start, "\(mode) \(name) vs \(b.rawValue): first FAIL \(first?.name ?? "none"), expected \(start)")
                } else if first?.name != start {
                    // below the resolution where it starts: the ratio there is within the limit, and a pass says what it cannot see
                    #expect(atStart?.passed == true, "\(mode) \(name): \(start) should pass if it is not the first FAIL")
                    if first == nil { #expect(!r.floors.isEmpty || mode == .tf32Conv, "\(mode) \(name): a pass states its floor") }
                }
            }
        }
        print(table.joined(separator: "\n"))
    }

    /// A float32 file with LayerNorm eps 1e-5 or exact GELU in encoder block 0 fails against
    /// the reference, and its diagnosis names no reduced-precision mode: upstream products
    /// agree at float32's level. Against fast-tf32 / fast-bf16 it fails, or the pass states
    /// its floor and that the file is more precise than the mode.
    @Test(arguments: ["ln-eps", "gelu-exact"])
    func float32BugIsNeverDiagnosedAsReducedPrecision(_ kind: String) throws {
        for seed in [1, 2] as [UInt64] {
            let s = Self.setup(seed: seed)
            let v = kind == "ln-eps" ? FastVariant(layerNormEpsBlock: 0, layerNormEps: 1e-5) : FastVariant(exactGELUBlock: 0)
            let path = try Self.file(s, try FastBackend.run(s.fastSetup, precision: .fp32, variant: v), "f32-\(kind)-\(seed)", declare: nil)
            let r = try Self.diff(path, .ref)
            #expect(r.comparisons.first { !$0.passed }?.name == "activations/student.enc.block.0", "\(kind) seed \(seed): \(Self.failures(r))")
            #expect(r.diagnosis.count == 1 && r.diagnosis[0].contains("match no other precision mode") && !r.diagnosis[0].contains("compare with"),
                    "\(kind) seed \(seed): \(r.diagnosis)")
            for b in [Backend.fastTF32, .fastBF16, .fastFP16] {
                let t = try Self.diff(path, b), ok = t.passed
                if ok {
                    #expect(!t.floors.isEmpty && t.notes.contains { $0.contains("this is not a \(b.mode!.rawValue) run") },
                            "\(kind) vs \(b.rawValue) passed without saying what it cannot see: \(t.notes)")
                }
            }
        }
    }

    /// A TF32 run is diagnosed as such against the reference (not as a bug), an fp16 one is
    /// judged in fp16 from its values, and a float32 run with a TF32 patch embedding is named.
    @Test func reducedRunsAreDiagnosedByTheirMode() throws {
        let s = Self.setup(seed: 5)
        let tf32 = try Self.file(s, try Self.twin(s, .tf32, seed: 5), "diag-tf32", declare: nil)
        let r = try Self.diff(tf32, .ref), bad = !r.passed
        #expect(bad && r.diagnosis.first?.contains("--b fast-tf32,") == true, "a TF32 file passes or is not diagnosed with --b fast-tf32: \(r.diagnosis)")
        let conv = try Self.file(s, try Self.twin(s, .tf32Conv, seed: 5), "diag-tf32conv", declare: nil)
        let c = try Self.diff(conv, .ref), cbad = !c.passed
        #expect(cbad && c.diagnosis.first?.contains("--b fast-tf32-conv") == true, "a TF32-convolution file passes or is not diagnosed with --b fast-tf32-conv: \(c.diagnosis)")
    }

    /// A float32 run stored as float64 (hooks that call .double()) is judged as float32 and said.
    @Test func float32ValuesStoredAsFloat64AreJudgedAsFloat32() throws {
        let s = Self.setup(seed: 6)
        var res = try FastBackend.run(s.fastSetup, precision: .fp32)
        for k in res.keys where k.hasPrefix("activations/student.enc") { res[k]!.precision = .float64 }
        let r = try Self.diff(try Self.file(s, res, "stored-wide", declare: nil), .ref), ok = r.passed
        #expect(ok, "a float32 run stored as float64 fails:\n\(r.summary)\n\(Self.failures(r))")
        #expect(r.notes.contains { $0.contains("hold float32 values only") }, "no note says the float64 datasets hold float32 values: \(r.notes)")
        #expect(r.comparisons.first { $0.name == "activations/student.enc.block.0" }?.precisionA == .float32, "activations/student.enc.block.0 stored as float64 is not judged as float32")
    }

    /// A declared mode the oracle does not know is one clear error; a config without lr is said.
    @Test func declaredModeAndDefaultsAreChecked() throws {
        #expect(PrecisionMode(declared: "fast-bf16") == .bf16Autocast && PrecisionMode(declared: "tf32-conv") == .tf32Conv, "fast-bf16 / tf32-conv do not parse as bf16-autocast / tf32-conv")
        #expect(PrecisionMode(declared: "int8") == nil, "an unknown mode name (int8) parses")
        let s = Self.setup(seed: 7)
        let res = try FastBackend.run(s.fastSetup, precision: .fp32)
        let (ds, ints) = exchangeDatasets(s, res, params: .float32)
        let bad = tempDir().appendingPathComponent("bad-mode.h5").path
        try ExchangeWriter.write(bad, config: s.config, configExtra: ["precision_mode": "int8"], datasets: ds, integers: ints)
        #expect("an unknown precision_mode is not one error naming it") { _ = try Self.diff(bad, .ref) } throws: { "\($0)".contains("precision_mode \"int8\"") }
        var o = s.config.jsonObject
        o.removeValue(forKey: "lr")
        let json = String(data: try JSONSerialization.data(withJSONObject: o), encoding: .utf8)!
        let nolr = tempDir().appendingPathComponent("no-lr.h5").path
        try ExchangeWriter.write(nolr, config: s.config, datasets: ds, integers: ints, rawConfigJSON: json)
        let r = try Self.diff(nolr, .ref)
        #expect(r.notes.contains { $0.contains("no 'lr'") && $0.contains("after-step") }, "no note names the missing lr the after-step rule assumed: \(r.notes)")
    }

    /// The after-step rules name the side whose step they judge ("the file's AdamW step",
    /// "EMA teacher"), not "a" or "b".
    @Test func afterStepRulesNameTheSide() throws {
        let s = Self.setup(seed: 8)
        var res = try FastBackend.run(s.fastSetup, precision: .fp32)
        for spec in s.config.studentParameters where !spec.frozen {   // a step of lr/10
            let p0 = s.student[spec.key].data, g = res["grads/" + spec.key]!.values
            res["after_step/params/" + spec.key]!.values = zip(p0, g).map { Double(Float($0.0)) - s.config.lr / 10 * $0.1 / (abs($0.1) + 1e-8) }
        }
        let path = try Self.file(s, res, "lr10-named", declare: .float32)
        let r = try Self.diff(path, .ref)
        let lines = r.lines()
        let step = lines.first { $0.hasPrefix("FAIL after_step/params/") } ?? ""
        #expect(step.contains("rule lr10-named.h5's AdamW step from its own gradient"), "the lr/10 failure's rule does not name the file's own AdamW step: \(step)")
        let teacher = r.comparisons.first { $0.name.hasPrefix("after_step/teacher/") }
        #expect(teacher?.tolerance.description(labelA: "the file", labelB: "ref").contains("'s EMA teacher from") == true, "the after-step teacher's rule does not name the side's own EMA: \(String(describing: teacher?.tolerance.description(labelA: "the file", labelB: "ref")))")
        #expect(!lines.contains { $0.contains("a's Adam") || $0.contains("b's Adam") }, "a report line names a side as a or b instead of by its label")
    }
}
