import Foundation
import SDDiTCore
import SDDiTExchange

// The comparison: which file is judged in which precision mode, and each tensor's verdict
// (the rule of the two precisions or the after-step rule, and a file's calibrated verdict
// against the error of a correct run in its mode, `CalibrationLimits`).

/// The file judged by calibration and the mode it is judged in: one file against a
/// backend, in the mode declared by the file, asked for (`--b fast-bf16`) or seen in its
/// values; of two files, the one in a reduced mode, judged against the float64 one as the truth.
struct Judging {
    /// The mode and why (nil: nothing is judged by calibration).
    var evidence: ModeEvidence? = nil
    /// The judged file is side a.
    var fileIsA: Bool
    /// Two files, the other one float64: the truth the judged one is compared against.
    var truthFile = false
    /// The backend facing the file (nil: two files, or two backends).
    let otherBackend: Backend?

    init(_ inputs: DiffInputs, options o: DiffOptions) throws {
        let calibrates = o.calibrate && o.rtol == nil && o.atol == nil
        fileIsA = inputs.fileA != nil
        otherBackend = fileIsA ? inputs.backendB : inputs.backendA
        if calibrates, let f = inputs.loneFile, let ob = otherBackend {
            evidence = try ModeEvidence.infer(f, against: ob.mode == nil ? nil : ob)
        } else if calibrates, let fa = inputs.fileA, let fb = inputs.fileB {
            let ea = try ModeEvidence.infer(fa, against: nil), eb = try ModeEvidence.infer(fb, against: nil)
            if (ea == nil) != (eb == nil) {
                evidence = ea ?? eb
                fileIsA = ea != nil
                truthFile = true
            }
        }
    }

    var mode: PrecisionMode? { evidence?.mode }
    /// The file against its mode's own backend (`--b fast-bf16` for a bf16-autocast file).
    var againstMode: Bool { otherBackend != nil && otherBackend == mode?.backend }
}

/// Judges the datasets of a diff one at a time and keeps every verdict, and the calibrated
/// file's error profile (its error and the level of a correct run, per tensor) for the
/// diagnosis and the detection floors.
final class TensorJudge {
    let inputs: DiffInputs, judging: Judging, sides: DiffSides
    private(set) var comparisons: [Comparison] = []
    private(set) var profile: [ProfileEntry] = []
    /// A seeded setup's state before the step (a file's is read when asked for).
    private let seededBefore: [String: NamedTensor]?

    init(_ inputs: DiffInputs, _ judging: Judging, _ sides: DiffSides) throws {
        self.inputs = inputs; self.judging = judging; self.sides = sides
        seededBefore = inputs.setupFile == nil ? try setupDatasets(inputs.setup()).floats : nil
    }

    /// Compares x (side a) with y (side b); `truth`: the reference's tensor when it runs, or
    /// the float64 file's.
    func compare(_ p: String, _ x: NamedTensor, _ y: NamedTensor, truth: NamedTensor?) throws {
        let o = inputs.options
        var x = x, y = y
        let fileT = judging.fileIsA ? x : y
        let judgedHere = judging.mode != nil && !ExchangeFile.isSetup(p) && !p.hasPrefix("params/") && p != "sampler/sigmas"
        // the file side is judged in its mode's precision (the blanket rule is the ceiling)
        if judgedHere, let m = judging.mode {
            let cap = m.resultLabel(p)
            if judging.fileIsA { x.precision = min(x.precision, cap) } else { y.precision = min(y.precision, cap) }
        }
        var c = DiffEngine.verdict(p, x, y, try context(p), lr: inputs.config.lr, rtol: o.rtol, atol: o.atol)
        if judgedHere, let m = judging.mode, let t = truth, let run = sides.calibrationRun, Calibration.applies(c, p), let f = try run.tensor(p) {
            // the file's error against the truth: this comparison's own when the truth is its other side
            let error = sides.truthBeside ? Calibration.normwise(fileT.values, t.values) : c.normwise
            if let level = Calibration.level(correct: f, truth: t, storage: fileT.precision, mode: m), let error {
                let lim = CalibrationLimits.limit(m, path: p) + (judging.againstMode ? CalibrationLimits.againstModeExtra : 0)
                c.calibration = (level, c.normwise / level, lim, m.rawValue)
                profile.append(ProfileEntry(name: p, error: error, level: level, limit: lim, failed: c.calibrationFailed))
            }
        }
        comparisons.append(c)
    }

    /// What the after-step rule reads for path `p`: both sides' gradient and updated student
    /// tensor of its key, and the state before.
    private func context(_ p: String) throws -> AfterStepContext {
        var key: String? = nil
        if p.hasPrefix("after_step/params/") { key = String(p.dropFirst(18)) }
        if p.hasPrefix("after_step/teacher/") { key = String(p.dropFirst(19)) }
        var bef: [String: NamedTensor] = [:], dA: [String: NamedTensor] = [:], dB: [String: NamedTensor] = [:]
        if let k = key {
            for q in ["params/" + k, "teacher/" + k] { bef[q] = try before(q) }
            for q in ["grads/" + k, "after_step/params/" + k] { dA[q] = try sides.a.get(q); dB[q] = try sides.b.get(q) }
        }
        return AfterStepContext(inputs.config, before: bef, sideA: dA, sideB: dB,
                                sideAHasGradients: sides.a.hasGradients, sideBHasGradients: sides.b.hasGradients)
    }

    /// A tensor of the state before the step.
    private func before(_ p: String) throws -> NamedTensor? {
        if let f = inputs.setupFile { return try f.dataset(p) }
        return seededBefore?[p]
    }
}

extension DiffEngine {
    /// The comparison of one dataset, as `oracle diff`, the tests and `oracle regress` make it:
    /// after-step parameters by `AfterStepRule` (unless --rtol / --atol override the rules),
    /// everything else by `Tolerances.rule` for the two precisions.
    public static func verdict(_ p: String, _ x: NamedTensor, _ y: NamedTensor, _ ctx: AfterStepContext,
                               lr: Double, rtol: Double? = nil, atol: Double? = nil) -> Comparison {
        if rtol == nil, atol == nil, let c = AfterStepRule.compare(p, x, y, ctx) { return c }
        var tol = Tolerances.rule(for: p, x.precision, y.precision, lr: lr)
        if let rt = rtol { tol.rtol = rt; tol.reason = "--rtol" }
        if let at = atol { tol.atolAbs = at; tol.atolScale = 0; tol.reason += " --atol" }
        return Compare.tensors(p, x, y, tolerance: tol)
    }
}

extension AfterStepContext {
    /// The context of a run of `cfg` (its optimizer settings) on the given setup.
    public init(_ cfg: ModelConfig, before: [String: NamedTensor], sideA: [String: NamedTensor], sideB: [String: NamedTensor],
                sideAHasGradients: Bool? = nil, sideBHasGradients: Bool? = nil) {
        self.init(lr: cfg.lr, weightDecay: cfg.weightDecay, eps: cfg.adamEps, emaBeta: cfg.emaBeta,
                  before: before, sideA: sideA, sideB: sideB, sideAHasGradients: sideAHasGradients, sideBHasGradients: sideBHasGradients)
    }
}
