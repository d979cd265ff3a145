import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTReference

/// One side of a comparison: a backend by name, or an exchange file.
public enum Side: Sendable, CustomStringConvertible {
    case backend(Backend)
    case file(String)

    public static func parse(_ s: String) -> Side {
        if let b = Backend(rawValue: s) { return .backend(b) }
        return .file(s)
    }
    public var description: String {
        switch self {
        case .backend(let b): return b.rawValue
        case .file(let p): return (p as NSString).lastPathComponent
        }
    }
}

public struct DiffOptions: Sendable {
    public var config: ModelConfig = .tiny
    public var seed: UInt64 = 0
    public var batch = 2
    public var maskRatio: Double? = nil
    public var sampleSteps: Int? = 5
    public var cfgScale: Double? = nil
    public var rtol: Double? = nil
    public var atol: Double? = nil
    public var allowMissing = false
    /// Judge a float32 file also against the error of the fast path on its setup (`Calibration`).
    public var calibrate = true
    /// The bytes each backend run may use (default: this machine's memory).
    public var memory: Double? = nil
    public init() {}
}

public struct DiffReport: Sendable {
    public var labelA: String, labelB: String
    public var comparisons: [Comparison] = []
    public var onlyInA: [String] = [], onlyInB: [String] = []
    /// Gradients (or their after-step updates) recorded for a fixed parameter (SPEC §5:
    /// pos_embed, decoder_pos_embed, head.last_layer.weight_g are not trained): a bug, never
    /// merely "missing on the other side"; they fail whatever --allow-missing says.
    public var fixedTrained: [String] = []
    /// Groups the backend side computed but the file did not record (not compared).
    public var notRecorded: [String] = []
    /// Every path of both sides in comparison order (for printing one-sided ones in place).
    public var order: [String] = []
    /// What the errors of a calibrated file look like, when it fails calibration (`Calibration.diagnose`).
    public var diagnosis: [String] = []
    /// What the engine could not do, said plainly (a calibration that does not fit in memory).
    public var notes: [String] = []
    public var failed: Int { comparisons.filter { !$0.passed }.count + fixedTrained.count }
    public var allowMissing = false

    /// Passes only when something was compared, nothing failed, and (unless allowed) no
    /// dataset is missing from either side.
    public var passed: Bool {
        !comparisons.isEmpty && failed == 0 && (allowMissing || (onlyInA.isEmpty && onlyInB.isEmpty))
    }
    public var summary: String {
        var s = "compared \(comparisons.count), failed \(failed), only-in-a \(onlyInA.count), only-in-b \(onlyInB.count)"
        if !notRecorded.isEmpty { s += "; not recorded, not compared: " + notRecorded.joined(separator: ", ") }
        return s
    }

    public func lines(verbose: Bool = false) -> [String] {
        var out: [String] = []
        // comparisons and one-sided datasets in comparison order
        var byName: [String: Comparison] = [:]
        for c in comparisons { byName[c.name] = c }
        let a = Set(onlyInA), b = Set(onlyInB), fixed = Set(fixedTrained)
        for p in (order.isEmpty ? comparisons.map(\.name) + onlyInA + onlyInB : order) {
            if let c = byName[p] {
                if verbose || !c.passed { out += c.lines(labelA: labelA, labelB: labelB) }
            } else if fixed.contains(p) {
                out.append("FAIL /\(p) in \(a.contains(p) ? labelA : labelB): gradient recorded for a fixed parameter (not trained, SPEC §5)")
            } else if a.contains(p) {
                out.append("ONLY-IN-A /\(p)")
            } else if b.contains(p) {
                out.append("ONLY-IN-B /\(p)")
            }
        }
        if !verbose, !comparisons.isEmpty {
            // one line per group: how many tensors, how many failed, the closest to its limit
            var order: [String] = [], groups: [String: [Comparison]] = [:]
            for c in comparisons {
                let g = c.name.hasPrefix("after_step/params/") ? "after_step/params" : c.name.hasPrefix("after_step/teacher/")
                    ? "after_step/teacher" : String(c.name.split(separator: "/").first ?? "")
                if groups[g] == nil { order.append(g) }
                groups[g, default: []].append(c)
            }
            for g in order {
                let cs = groups[g]!, bad = cs.filter { !$0.passed }.count
                let w = cs.max { $0.closeness < $1.closeness }!
                var line = "  " + g.padding(toLength: 19, withPad: " ", startingAt: 0) + String(format: "%4d tensors, %d failed; ", cs.count, bad)
                    + Self.closest(w, String(w.name.dropFirst(g.count + 1)))
                if max(cs[0].precisionA, cs[0].precisionB) >= .float64 {
                    let least = cs.min { $0.bits < $1.bits }!
                    line += String(format: "; agreement >= %.1f bits (%@)", least.bits, String(least.name.dropFirst(g.count + 1)))
                }
                out.append(line)
            }
        }
        if !verbose, failed == 0, !comparisons.isEmpty {
            let worst = comparisons.max { $0.closeness < $1.closeness }!
            out.append(String(format: "all %d tensors within tolerance; closest to its limit: %@ ", comparisons.count, worst.name)
                       + Self.closest(worst, nil))
        }
        out += diagnosis
        out += notes
        if comparisons.isEmpty { out.append("FAIL nothing was compared: the two sides share no dataset") }
        let missing = onlyInA.count + onlyInB.count - fixedTrained.count
        if !allowMissing, missing > 0 {
            out.append("FAIL \(missing) datasets are missing on one side, in groups both record (--allow-missing accepts a dump that left some out)")
        }
        out.append(summary)
        return out
    }

    /// How close a comparison is to its limit, in its rule's own terms.
    static func closest(_ c: Comparison, _ name: String?) -> String {
        let at = name.map { " in " + $0 } ?? ""
        if let cal = c.calibration, cal.ratio / cal.limit >= c.maxRel / max(c.tolerance.rtol, 1e-300) {
            return String(format: "error x%.3g the %@ level (limit x%.0f)%@", cal.ratio, cal.precision, cal.limit, at)
        }
        if c.unitOfAbs != nil { return String(format: "worst use of an Adam-step interval %.2f (limit 1)%@", c.maxRel, at) }
        return String(format: "max rel %.2e (rtol %.0e)%@", c.maxRel, c.tolerance.rtol, at)
    }

    public var json: [String: Any] {
        ["a": labelA, "b": labelB, "compared": comparisons.count, "failed": failed,
         "only_in_a": onlyInA, "only_in_b": onlyInB, "passed": passed,
         "fixed_parameter_gradients": fixedTrained, "not_recorded": notRecorded, "diagnosis": diagnosis, "notes": notes,
         "tensors": comparisons.map(\.json)]
    }
}

/// Calibrated tolerances for float32 files: a tensor fails when its norm-wise error against the
/// float64 side, max|a - e| / max|e|, is far above the error of the fast path (float32, a
/// correct implementation) on the same setup: ratio = error / max(level, 4u), u = 2^-24.
/// Measured with the reference run in Float (an independent float32 implementation: plain
/// sequential loops) against the fast path, tiny config, six seeds, masked and unmasked, with
/// and without guidance, 516 tensors: median ratio 1.0, worst 2.9 (gradients of the final
/// layer); the sampler states 30 (that implementation keeps x in float32, where EDM's sampler
/// and the fast path keep it in float64). Limits: x16 (5.5x over the worst), x128 for the
/// sampler. A planted exact GELU or LayerNorm eps 1e-5 in one block: x400 and more at that
/// block's output (tests). The blanket rule of `Tolerances` stays as a ceiling.
public enum Calibration {
    public static let limit = 16.0, samplerLimit = 128.0, floorUnits = 4.0

    /// A comparison of a float32 tensor of the file side against a float64-or-better side,
    /// other than the after-step parameters (`AfterStepRule`) and the setup's fixed tables.
    static func applies(_ c: Comparison, actualIsA: Bool) -> Bool {
        let act = actualIsA ? c.precisionA : c.precisionB, exp = actualIsA ? c.precisionB : c.precisionA
        guard act == .float32, exp >= .float64, !c.shapeMismatch, c.nonFinite == nil else { return false }
        return !(c.name.hasPrefix("after_step/params/") || c.name.hasPrefix("after_step/teacher/") || c.name.hasPrefix("params/"))
    }

    /// Which precision the errors from the first failing tensor on look like: the file's
    /// norm-wise error there against the levels of the fast path with TF32 operands and in
    /// bf16 autocast on the same setup (nearest within 4x), else a bug.
    static func diagnose(_ first: Comparison, expected e: NamedTensor, setup: RunSetup, memory: Double? = nil) throws -> [String] {
        let E = first.normwise
        var best: (Backend, Double, Double)? = nil
        for m in [Backend.fastTF32, .fastBF16] {
            // the one tensor kept of each streamed run, which stops once it has it
            struct Found: Error {}
            var kept: NamedTensor? = nil
            do {
                try m.stream(setup, memory: memory) { p, d in if p == first.name { kept = d; throw Found() } }
            } catch is Found {} catch is ExchangeError { continue }   // does not fit
            guard let f = kept, let j = judge(first, correct: f, expected: e) else { continue }
            let d = abs(log2(E / j.level))
            if best == nil || d < best!.1 { best = (m, d, j.level) }
        }
        let what: [Backend: String] = [.fastTF32: "~10-bit-mantissa operands: TF32 matmuls or convolutions?",
                                       .fastBF16: "bfloat16 operands (8-bit significand): bf16 autocast?"]
        if let (m, d, level) = best, d <= 2 {
            return [String(format: "diagnosis: from %@ on, errors are those of %@ (%.2e here, %@ %.2e); compare with --b %@",
                           first.name, what[m]!, E, m.rawValue, level, m.rawValue)]
        }
        return [String(format: "diagnosis: from %@ on, errors are x%.0f those of a correct float32 run and match no reduced-precision mode (TF32, bf16): a bug there?",
                       first.name, first.calibration?.ratio ?? 0)]
    }

    static func judge(_ c: Comparison, correct f: NamedTensor, expected e: NamedTensor) -> (level: Double, ratio: Double, limit: Double, precision: String)? {
        guard f.values.count == e.values.count, f.values.allSatisfy(\.isFinite) else { return nil }
        let scale = e.values.reduce(0) { max($0, abs($1)) }
        var m = 0.0
        for i in 0..<e.values.count { m = max(m, abs(f.values[i] - e.values[i])) }
        let level = max(scale > 0 ? m / scale : m, floorUnits * Precision.float32.unitRoundoff)
        let lim = c.name.hasPrefix("sampler/") ? samplerLimit : limit
        return (level, c.normwise / level, lim, "float32")
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

/// One side of a diff as the engine reads it: a file (its results read when asked for), a
/// backend's results held whole, or the reference streaming its results (`Backend.stream`),
/// which the engine compares as they come and keeps none of, beyond the gradient and
/// updated student tensor of the key being judged. Memory is then the reference's step plus
/// a tensor or two of the other side: a diff at XL/2 fits where two whole runs would not.
final class DiffSide {
    let file: ExchangeFile?
    var held: [String: NamedTensor]?
    /// Paths this side has, all of them (`full`) and those it is compared on (`compared`).
    var full: Set<String> = [], compared: Set<String> = []
    var hasGradients = false
    /// The streamed side's gradient and updated student tensor of the current key.
    var recent: [String: NamedTensor] = [:]
    /// A file's fixed tables (params/pos_embed, ...) are judged in the precision of its
    /// results: a float32 model's tables stored as float64 (as tools/sddit_h5.py writes a
    /// state_dict) hold float32 values.
    var tablePrecision: Precision? = nil

    init(file: ExchangeFile) {
        self.file = file
        full = Set(file.index.keys)
        compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
        tablePrecision = file.index.filter { !ExchangeFile.isSetup($0.key) && !$0.key.hasPrefix("params/") }.map(\.value.precision).min()
    }
    init(held d: [String: NamedTensor]) {
        file = nil; held = d
        full = Set(d.keys); compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
    }
    init(streamedWithGradients g: Bool) { file = nil; hasGradients = g }

    /// Any of the side's datasets, as it recorded it.
    func get(_ p: String) throws -> NamedTensor? {
        if let r = recent[p] { return r }
        if let held { return held[p] }
        return try file?.dataset(p)
    }
    /// A dataset as it is compared (nil: not compared on this side).
    func forComparison(_ p: String) throws -> NamedTensor? {
        guard compared.contains(p), var d = try get(p) else { return nil }
        if p.hasPrefix("params/"), let tp = tablePrecision { d.precision = min(d.precision, tp) }
        return d
    }
    /// Keeps a streamed gradient or updated student tensor while its key is judged.
    func remember(_ p: String, _ d: NamedTensor) {
        let key: Substring
        if p.hasPrefix("grads/") { key = p.dropFirst(6) } else if p.hasPrefix("after_step/params/") { key = p.dropFirst(18) } else { return }
        recent = recent.filter { $0.key.hasSuffix("/" + key) }
        recent[p] = d
    }
}

public enum DiffEngine {
    public static func run(a: Side, b: Side, options o: DiffOptions) throws -> DiffReport {
        // Resolve the setup: from a file when one side is a file, else from the seed.
        var fileA: ExchangeFile? = nil, fileB: ExchangeFile? = nil
        if case .file(let p) = a { fileA = try ExchangeFile.read(p, resultsOnDemand: true) }
        if case .file(let p) = b { fileB = try ExchangeFile.read(p, resultsOnDemand: true) }
        let setupFile = fileA ?? fileB
        var setup: RunSetup? = nil
        func getSetup() throws -> RunSetup {
            if let s = setup { return s }
            let s = try setupFile?.runSetup()
                ?? SeededSetup.make(o.config, seed: o.seed, batch: o.batch, maskRatio: o.maskRatio ?? o.config.maskRatio,
                                    sampleSteps: o.sampleSteps, cfgScale: o.cfgScale)
            setup = s
            return s
        }
        let cfg = setupFile?.config ?? o.config
        // Which side streams: a reference backend (float64 or Float80; b of two), the other
        // side a file or a backend's results held whole; with no reference, nothing streams
        // and a's datasets are taken in order.
        var backendA: Backend? = nil, backendB: Backend? = nil
        if case .backend(let be) = a { backendA = be }
        if case .backend(let be) = b { backendB = be }
        let refA = backendA.map { $0.fastPrecision == nil } ?? false, refB = backendB.map { $0.fastPrecision == nil } ?? false
        let streamed: Backend? = refB ? backendB : (refA ? backendA : nil)
        let streamsA = !refB && refA
        func side(_ f: ExchangeFile?, _ be: Backend?, streams: Bool) throws -> DiffSide {
            if let f { return DiffSide(file: f) }
            if streams { return DiffSide(streamedWithGradients: try getSetup().inputs != nil) }
            return DiffSide(held: try be!.run(try getSetup(), memory: o.memory))
        }
        // a held backend runs whole before the streamed one
        let sideA: DiffSide, sideB: DiffSide
        if streamsA { sideB = try side(fileB, backendB, streams: false); sideA = try side(fileA, backendA, streams: true) }
        else { sideA = try side(fileA, backendA, streams: false); sideB = try side(fileB, backendB, streams: streamed != nil) }
        let driver = streamsA ? sideA : sideB, other = streamsA ? sideB : sideA

        // A backend run on a file's setup: the file's setup datasets were consumed, not compared;
        // backend outputs in groups the file does not record were not asked for.
        var recordedGroups: Set<String>? = nil
        if let f = setupFile, fileA == nil || fileB == nil {
            recordedGroups = Set(f.index.keys.filter { !ExchangeFile.isSetup($0) }.map(groupOf))
            for s in [sideA, sideB] {
                s.compared = s.file != nil ? s.full.filter { !ExchangeFile.isSetup($0) } : s.full.filter { recordedGroups!.contains(groupOf($0)) }
            }
        }
        var r = DiffReport(labelA: a.description, labelB: b.description)
        r.allowMissing = o.allowMissing

        // the state before the step, for the after-step rule
        let seededBefore: [String: NamedTensor]? = setupFile == nil ? try setupDatasets(getSetup()).floats : nil
        func before(_ p: String) throws -> NamedTensor? {
            if let f = setupFile { return try f.dataset(p) }
            return seededBefore?[p]
        }
        let frozen = Set(cfg.studentParameters.filter(\.frozen).map(\.key))
        func trainsFixed(_ p: String) -> Bool { p.hasPrefix("grads/") && frozen.contains(String(p.dropFirst(6))) }

        // Calibration: a float32 file against a float64 side, each tensor's error against that
        // of the fast path (a correct float32 implementation) on the same setup (`CalibrationRun`),
        // run the first time a comparison needs it, or before a streamed reference; the side
        // judged is the less precise one, when it is a file.
        let calibrates = o.calibrate && o.rtol == nil && o.atol == nil
        var fast: CalibrationRun? = nil, calibrationSkipped = false
        func calibration() throws -> CalibrationRun? {
            if fast == nil, !calibrationSkipped {
                do { fast = try CalibrationRun.run(.fast, try getSetup(), memory: o.memory) } catch let e as ExchangeError {
                    calibrationSkipped = true
                    r.notes.append("calibration skipped: \(e); float32 tensors judged by the float32 rule alone (README \"Tolerances\")")
                }
            }
            return fast
        }
        func actualIsA(_ c: Comparison) -> Bool? {
            if c.precisionA < c.precisionB { return fileA != nil ? true : nil }
            return c.precisionB < c.precisionA && fileB != nil ? false : nil
        }
        // Beside a streamed reference, a file with float32 results is calibrated: the fast run
        // goes first and its model is released before the reference starts (the peak is the
        // larger of the two, not their sum).
        if calibrates, let be = streamed, be.fastPrecision == nil,
           let f = streamsA ? fileB : fileA, f.index.contains(where: { !ExchangeFile.isSetup($0.key) && $0.value.precision == .float32 }) {
            _ = try calibration()
        }
        var firstCalibrationFailure: (Comparison, NamedTensor)? = nil
        var comparisons: [Comparison] = []

        func compare(_ p: String, _ x: NamedTensor, _ y: NamedTensor) throws {
            let ctx = try context(p, x, y)
            var c = verdict(p, x, y, ctx, lr: cfg.lr, rtol: o.rtol, atol: o.atol)
            if calibrates, let aAct = actualIsA(c), Calibration.applies(c, actualIsA: aAct), !calibrationSkipped {
                let e = aAct ? y : x
                if let f = try calibration()?.tensor(p) {
                    c.calibration = Calibration.judge(c, correct: f, expected: e)
                    if c.calibrationFailed, firstCalibrationFailure.map({ DatasetOrder.sortKey(p, cfg) < DatasetOrder.sortKey($0.0.name, cfg) }) ?? true {
                        firstCalibrationFailure = (c, e)
                    }
                }
            }
            comparisons.append(c)
        }
        // What the after-step rule reads for this path: both sides' gradient and updated
        // student tensor of its key, and the state before.
        func context(_ p: String, _ x: NamedTensor, _ y: NamedTensor) throws -> AfterStepContext {
            var key: String? = nil
            if p.hasPrefix("after_step/params/") { key = String(p.dropFirst(18)) }
            if p.hasPrefix("after_step/teacher/") { key = String(p.dropFirst(19)) }
            var bef: [String: NamedTensor] = [:], dA: [String: NamedTensor] = [:], dB: [String: NamedTensor] = [:]
            if let k = key {
                for q in ["params/" + k, "teacher/" + k] { bef[q] = try before(q) }
                for q in ["grads/" + k, "after_step/params/" + k] { dA[q] = try sideA.get(q); dB[q] = try sideB.get(q) }
            }
            return AfterStepContext(cfg, before: bef, sideA: dA, sideB: dB,
                                    sideAHasGradients: sideA.hasGradients, sideBHasGradients: sideB.hasGradients)
        }
        if let be = streamed {
            try be.stream(try getSetup(), memory: o.memory) { p, d in
                driver.full.insert(p)
                driver.remember(p, d)
                if let g = recordedGroups, !g.contains(groupOf(p)) { return }
                driver.compared.insert(p)
                guard let y = try other.forComparison(p) else { return }
                if streamsA { try compare(p, d, y) } else { try compare(p, y, d) }
            }
            driver.recent = [:]
        } else {
            for p in DatasetOrder.sorted(Array(sideA.compared), cfg) {
                guard let y = try sideB.forComparison(p), let x = try sideA.forComparison(p) else { continue }
                try compare(p, x, y)
            }
        }
        if let g = recordedGroups {   // what the backend computed in groups the file does not record
            let computed = fileA == nil ? sideA.full : sideB.full
            r.notRecorded = ["activations", "losses", "grads", "after_step", "sampler"].filter { grp in
                !g.contains(grp) && computed.contains { groupOf($0) == grp }
            }
        }

        r.order = DatasetOrder.sorted(Array(sideA.compared.union(sideB.compared)), cfg)
        let rank = Dictionary(uniqueKeysWithValues: r.order.enumerated().map { ($1, $0) })
        r.comparisons = comparisons.sorted { rank[$0.name]! < rank[$1.name]! }
        for p in r.order {
            let inA = sideA.compared.contains(p), inB = sideB.compared.contains(p)
            if !inA { r.onlyInB.append(p) } else if !inB { r.onlyInA.append(p) }
            if !(inA && inB), trainsFixed(p) { r.fixedTrained.append(p) }
        }
        if let (first, e) = firstCalibrationFailure {
            fast = nil   // its model is long gone; its file too, before the diagnosis's runs
            r.diagnosis = try Calibration.diagnose(first, expected: e, setup: try getSetup(), memory: o.memory)
        }
        return r
    }

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

    /// "after_step/params/x" -> "after_step", "grads/x" -> "grads"
    static func groupOf(_ p: String) -> String { String(p.split(separator: "/").first ?? "") }
}
