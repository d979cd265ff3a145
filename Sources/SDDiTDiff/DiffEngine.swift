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
    /// Pass a file whose calibration could not run (memory) on the blanket rule alone.
    public var allowUncalibrated = false
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
    /// What the engine could not do, said plainly (a calibration that does not fit in memory),
    /// and what it assumed (a config default, a file's float64 datasets judged as float32).
    public var notes: [String] = []
    /// The precision mode the file was judged in, and why (nil: no calibrated file).
    public var mode: String? = nil, modeSource: String? = nil
    /// Per group, the least change a pass in a reduced-precision mode could have seen.
    public var floors: [String] = []
    /// Calibration applied to the file but could not run (memory): a failure unless allowed.
    public var uncalibrated = false
    public var allowUncalibrated = false
    public var failed: Int { comparisons.filter { !$0.passed }.count + fixedTrained.count }
    public var allowMissing = false

    /// Passes only when something was compared, nothing failed, and (unless allowed) no
    /// dataset is missing from either side.
    public var passed: Bool {
        !comparisons.isEmpty && failed == 0 && (allowMissing || (onlyInA.isEmpty && onlyInB.isEmpty))
            && (!uncalibrated || allowUncalibrated)
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
        if let m = mode, let src = modeSource { out.append("judged as \(m): \(src)") }
        out += diagnosis
        out += floors
        out += notes
        if uncalibrated, !allowUncalibrated {
            out.append("FAIL the calibrated verdict could not run (above); --uncalibrated accepts the blanket rule alone")
        }
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
         "mode": mode ?? NSNull(), "mode_source": modeSource ?? NSNull(), "floors": floors, "uncalibrated": uncalibrated,
         "tensors": comparisons.map(\.json)]
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
    /// The calibration run's results, as a side (the file against its mode's own backend).
    init(run: CalibrationRun) throws {
        file = nil; self.run = run
        full = Set(run.paths); compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
    }
    var run: CalibrationRun? = nil
    /// float64 datasets of a file that hold float32 values only (`forComparison` judges them as float32).
    var narrowed: [String] = []

    /// Any of the side's datasets, as it recorded it.
    func get(_ p: String) throws -> NamedTensor? {
        if let r = recent[p] { return r }
        if let held { return held[p] }
        if let run { return try run.tensor(p) }
        return try file?.dataset(p)
    }
    /// A dataset as it is compared (nil: not compared on this side).
    func forComparison(_ p: String) throws -> NamedTensor? {
        guard compared.contains(p), var d = try get(p) else { return nil }
        if p.hasPrefix("params/"), let tp = tablePrecision { d.precision = min(d.precision, tp) }
        // a float32 run stored as float64 (hooks that call .double()): judged as float32
        if file != nil, d.precision == .float64, !ExchangeFile.isSetup(p), !p.hasPrefix("params/"), p != "sampler/sigmas",
           Precision.float32.holdsExactly(d.values) {
            d.precision = .float32
            if !narrowed.contains(p) { narrowed.append(p) }
        }
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
        var backendA: Backend? = nil, backendB: Backend? = nil
        if case .backend(let be) = a { backendA = be }
        if case .backend(let be) = b { backendB = be }
        var r = DiffReport(labelA: a.description, labelB: b.description)
        r.allowMissing = o.allowMissing
        r.allowUncalibrated = o.allowUncalibrated

        // The file judged by calibration (one file against a backend), and the mode it is
        // judged in: declared by the file, asked for (--b fast-bf16), or seen in its values.
        // Two files: the float64 one is the truth the other is judged against, when the other
        // is in a reduced mode.
        let calibrates = o.calibrate && o.rtol == nil && o.atol == nil
        let judged: ExchangeFile? = (fileA == nil) != (fileB == nil) ? setupFile : nil
        var fileIsA = fileA != nil
        let otherBackend = fileIsA ? backendB : backendA
        var evidence: ModeEvidence? = nil
        var truthFile = false
        if calibrates, let f = judged, let ob = otherBackend {
            evidence = try ModeEvidence.infer(f, against: ob.mode == nil ? nil : ob)
        } else if calibrates, let fa = fileA, let fb = fileB {
            let ea = try ModeEvidence.infer(fa, against: nil), eb = try ModeEvidence.infer(fb, against: nil)
            if (ea == nil) != (eb == nil) {
                evidence = ea ?? eb
                fileIsA = ea != nil
                truthFile = true
            }
        }
        if let e = evidence {
            r.mode = e.mode.rawValue
            r.modeSource = e.source
            r.notes += e.notes
        }
        if let f = setupFile {
            // defaults the rules rely on are said, never taken silently
            for k in f.defaultedConfigKeys {
                let user = k == "rho" ? (f.has(group: "sampler") ? "the sampler's schedule" : nil)
                    : k == "mask_ratio" ? nil : (f.has(group: "after_step") ? "the after-step rules" : nil)
                guard let user else { continue }
                r.notes.append(String(format: "note: the file's config has no '%@'; %@ assume %@ = %g (the oracle's default): set it if the run used another",
                                      k, user, k, cfg.value(ofOptionalKey: k) ?? .nan))
            }
        }
        let mode = evidence?.mode

        // Which side streams: a reference backend (float64 or Float80; b of two). A file
        // judged against a fast mode streams the reference beside both, as the truth.
        let refA = backendA.map { $0.mode == nil } ?? false, refB = backendB.map { $0.mode == nil } ?? false
        let truthBeside = mode != nil && !(refA || refB) && !truthFile
        let streamed: Backend? = refB ? backendB : (refA ? backendA : (truthBeside ? .ref : nil))
        let streamsA = !refB && refA

        // The calibration run (the fast path in the file's mode on its setup), made before the
        // reference streams; against the mode's own backend it is that side.
        var calRun: CalibrationRun? = nil
        if let m = mode, let be = m.backend {
            do { calRun = try CalibrationRun.run(be, try getSetup(), memory: o.memory) } catch let e as ExchangeError {
                if otherBackend == be { throw e }
                r.uncalibrated = true
                r.notes.append("calibration skipped: \(e); \(m == .float32 ? "float32 tensors judged by the float32 rule alone" : "judged by the blanket rule of \(m.label.rawValue) alone") (README \"Tolerances\")")
            }
        }
        func side(_ f: ExchangeFile?, _ be: Backend?, streams: Bool) throws -> DiffSide {
            if let f { return DiffSide(file: f) }
            if streams { return DiffSide(streamedWithGradients: try getSetup().inputs != nil) }
            if let c = calRun, be == c.backend { return try DiffSide(run: c) }
            return DiffSide(held: try be!.run(try getSetup(), memory: o.memory))
        }
        let sideA: DiffSide, sideB: DiffSide
        if streamsA { sideB = try side(fileB, backendB, streams: false); sideA = try side(fileA, backendA, streams: true) }
        else { sideA = try side(fileA, backendA, streams: false); sideB = try side(fileB, backendB, streams: refB) }
        let driver: DiffSide? = streamed == nil || truthBeside ? nil : (streamsA ? sideA : sideB)

        // A backend run on a file's setup: the file's setup datasets were consumed, not compared;
        // backend outputs in groups the file does not record were not asked for.
        var recordedGroups: Set<String>? = nil
        if let f = setupFile, fileA == nil || fileB == nil {
            recordedGroups = Set(f.index.keys.filter { !ExchangeFile.isSetup($0) }.map(groupOf))
            for s in [sideA, sideB] {
                s.compared = s.file != nil ? s.full.filter { !ExchangeFile.isSetup($0) } : s.full.filter { recordedGroups!.contains(groupOf($0)) }
            }
        }

        // the state before the step, for the after-step rule
        let seededBefore: [String: NamedTensor]? = setupFile == nil ? try setupDatasets(getSetup()).floats : nil
        func before(_ p: String) throws -> NamedTensor? {
            if let f = setupFile { return try f.dataset(p) }
            return seededBefore?[p]
        }
        let frozen = Set(cfg.studentParameters.filter(\.frozen).map(\.key))
        func trainsFixed(_ p: String) -> Bool { p.hasPrefix("grads/") && frozen.contains(String(p.dropFirst(6))) }

        var comparisons: [Comparison] = [], profile: [ProfileEntry] = [], done = Set<String>()
        let againstMode = otherBackend != nil && otherBackend == mode?.backend

        /// Compares x (side a) with y (side b); `truth`: the reference's tensor, when it runs.
        func compare(_ p: String, _ x: NamedTensor, _ y: NamedTensor, truth: NamedTensor?) throws {
            done.insert(p)
            var x = x, y = y
            let fileT = fileIsA ? x : y
            let judgedHere = mode != nil && !ExchangeFile.isSetup(p) && !p.hasPrefix("params/") && p != "sampler/sigmas"
            // the file side is judged in its mode's precision (the blanket rule is the ceiling)
            if judgedHere, let m = mode {
                if fileIsA { x.precision = min(x.precision, m.label) } else { y.precision = min(y.precision, m.label) }
            }
            let ctx = try context(p, x, y)
            var c = verdict(p, x, y, ctx, lr: cfg.lr, rtol: o.rtol, atol: o.atol)
            if judgedHere, let m = mode, let t = truth, let run = calRun, Calibration.applies(c, p), let f = try run.tensor(p) {
                // the file's error against the truth: this comparison's own when the truth is its other side
                let error = truthBeside ? Calibration.normwise(fileT.values, t.values) : c.normwise
                if let level = Calibration.level(correct: f, truth: t, storage: fileT.precision, mode: m), let error {
                    let lim = CalibrationLimits.limit(m, path: p) + (againstMode ? CalibrationLimits.againstModeExtra : 0)
                    c.calibration = (level, c.normwise / level, lim, m.rawValue)
                    profile.append(ProfileEntry(name: p, error: error, level: level, limit: lim, failed: c.calibrationFailed))
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
                if let driver {
                    driver.full.insert(p)
                    driver.remember(p, d)
                    if let g = recordedGroups, !g.contains(groupOf(p)) { return }
                    driver.compared.insert(p)
                    guard let y = try (streamsA ? sideB : sideA).forComparison(p) else { return }
                    if streamsA { try compare(p, d, y, truth: d) } else { try compare(p, y, d, truth: d) }
                } else {   // the truth beside two sides
                    guard let x = try sideA.forComparison(p), let y = try sideB.forComparison(p) else { return }
                    try compare(p, x, y, truth: d)
                }
            }
            driver?.recent = [:]
        }
        // what no stream brought: every dataset both sides have, in order
        for p in DatasetOrder.sorted(Array(sideA.compared), cfg) where !done.contains(p) {
            guard let y = try sideB.forComparison(p), let x = try sideA.forComparison(p) else { continue }
            try compare(p, x, y, truth: truthFile ? (fileIsA ? y : x) : nil)
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
        for s in [sideA, sideB] where !s.narrowed.isEmpty {
            let n = s.narrowed.sorted { rank[$0] ?? 0 < rank[$1] ?? 0 }
            r.notes.append("note: \(n.count) float64 datasets of \(s === sideA ? r.labelA : r.labelB) hold float32 values only (a float32 run stored as float64; first \(n[0])): judged as float32")
        }

        if let m = mode {
            profile.sort { rank[$0.name]! < rank[$1.name]! }
            if let first = profile.first(where: \.failed), let run = calRun {
                r.diagnosis = try Calibration.diagnose(profile: profile, firstFailure: first.name, current: m, seenHalf: evidence?.seenHalf,
                                                       calibrationRun: run, setup: try getSetup(), memory: o.memory)
            }
            // a run more precise than the mode it is judged in: the verdict is blind to what
            // the file's own precision resolves
            if m != .float32, let e = profile.first(where: { $0.level >= CalibrationLimits.coarseLevel && $0.error < $0.level / CalibrationLimits.tooPreciseFactor }) {
                r.notes.append(String(format: "note: errors at %@ are %.2e, x%.2g those of a correct %@ run: this is not a %@ run; a pass here cannot see what its own precision would show (compare it as float32: --b ref, precision_mode \"float32\")",
                                      e.name, e.error, e.error / e.level, m.rawValue, m.rawValue))
            }
            if m != .float32 { r.floors = Calibration.floors(r.comparisons, mode: m, againstMode: againstMode) }
        }
        if r.floors.isEmpty { r.floors = Calibration.ruleFloors(r.comparisons) }
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
