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
         "fixed_parameter_gradients": fixedTrained, "not_recorded": notRecorded, "diagnosis": diagnosis,
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
    static func diagnose(_ first: Comparison, expected e: NamedTensor, setup: RunSetup) throws -> [String] {
        let E = first.normwise
        var best: (Backend, Double, Double)? = nil
        for m in [Backend.fastTF32, .fastBF16] {
            guard let f = try m.run(setup)[first.name], let j = judge(first, correct: f, expected: e) else { continue }
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
    public init(_ cfg: ModelConfig, before: [String: NamedTensor], sideA: [String: NamedTensor], sideB: [String: NamedTensor]) {
        self.init(lr: cfg.lr, weightDecay: cfg.weightDecay, eps: cfg.adamEps, emaBeta: cfg.emaBeta,
                  before: before, sideA: sideA, sideB: sideB)
    }
}

public enum DiffEngine {
    public static func run(a: Side, b: Side, options o: DiffOptions) throws -> DiffReport {
        // Resolve the setup: from a file when one side is a file, else from the seed.
        var fileA: ExchangeFile? = nil, fileB: ExchangeFile? = nil
        if case .file(let p) = a { fileA = try ExchangeFile.read(p) }
        if case .file(let p) = b { fileB = try ExchangeFile.read(p) }
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
        func datasets(_ side: Side, _ f: ExchangeFile?) throws -> [String: NamedTensor] {
            if let f { return f.datasets }
            if case .backend(let be) = side { return try be.run(try getSetup()) }
            return [:]
        }
        var dA = try datasets(a, fileA), dB = try datasets(b, fileB)
        let fullA = dA, fullB = dB   // what each side computed, also what is not compared (its gradients)
        let cfg = setupFile?.config ?? o.config
        // A backend run on a file's setup: the file's setup datasets were consumed, not compared;
        // backend outputs in groups the file does not record were not asked for.
        var notRecorded: [String] = []
        if let f = setupFile, fileA == nil || fileB == nil {
            let groups = Set(f.datasets.keys.filter { !ExchangeFile.isSetup($0) }.map(groupOf))
            let computed = Set((fileA == nil ? dA : dB).keys.map(groupOf))
            notRecorded = ["activations", "losses", "grads", "after_step", "sampler"].filter { computed.contains($0) && !groups.contains($0) }
            func trim(_ d: inout [String: NamedTensor], isFile: Bool) {
                d = d.filter { isFile ? !ExchangeFile.isSetup($0.key) : groups.contains(groupOf($0.key)) }
            }
            trim(&dA, isFile: fileA != nil); trim(&dB, isFile: fileB != nil)
        }
        // A file's fixed tables (params/pos_embed, ...) are judged in the precision of the
        // file's results: a float32 model's tables stored as float64 (as tools/sddit_h5.py
        // writes a state_dict) hold float32 values.
        func judgeTablesAsResults(_ d: inout [String: NamedTensor], _ f: ExchangeFile?) {
            guard let rp = f?.datasets.filter({ !ExchangeFile.isSetup($0.key) && !$0.key.hasPrefix("params/") }).map(\.value.precision).min() else { return }
            for k in d.keys where k.hasPrefix("params/") { d[k]!.precision = min(d[k]!.precision, rp) }
        }
        judgeTablesAsResults(&dA, fileA); judgeTablesAsResults(&dB, fileB)
        var r = DiffReport(labelA: a.description, labelB: b.description)
        r.notRecorded = notRecorded
        r.allowMissing = o.allowMissing
        // the state before the step, for the after-step rule
        let before: [String: NamedTensor]
        if let f = setupFile { before = f.datasets.filter { $0.key.hasPrefix("params/") || $0.key.hasPrefix("teacher/") } }
        else if let s = setup { before = setupDatasets(s).floats } else { before = [:] }
        let ctx = AfterStepContext(cfg, before: before, sideA: fullA, sideB: fullB)
        let frozen = Set(cfg.studentParameters.filter(\.frozen).map(\.key))
        func trainsFixed(_ p: String) -> Bool {
            p.hasPrefix("grads/") && frozen.contains(String(p.dropFirst(6)))
        }
        r.order = DatasetOrder.sorted(Array(Set(dA.keys).union(dB.keys)), cfg)
        for p in r.order {
            guard let x = dA[p] else { r.onlyInB.append(p); if trainsFixed(p) { r.fixedTrained.append(p) }; continue }
            guard let y = dB[p] else { r.onlyInA.append(p); if trainsFixed(p) { r.fixedTrained.append(p) }; continue }
            r.comparisons.append(verdict(p, x, y, ctx, lr: cfg.lr, rtol: o.rtol, atol: o.atol))
        }
        // A float32 file against a float64 side: each tensor's error against that of the fast
        // path (a correct float32 implementation) on the same setup.
        if o.calibrate, o.rtol == nil, o.atol == nil {
            // the side judged is the less precise one, and only when it is a file
            func actualIsA(_ c: Comparison) -> Bool? {
                let aLow = c.precisionA < c.precisionB
                if aLow { return fileA != nil ? true : nil }
                return c.precisionB < c.precisionA && fileB != nil ? false : nil
            }
            let todo = r.comparisons.indices.filter { i in actualIsA(r.comparisons[i]).map { Calibration.applies(r.comparisons[i], actualIsA: $0) } ?? false }
            if !todo.isEmpty {
                let fast = try Backend.fast.run(try getSetup())
                for i in todo {
                    let c = r.comparisons[i]
                    guard let f = fast[c.name], let e = (actualIsA(c)! ? fullB : fullA)[c.name] else { continue }
                    r.comparisons[i].calibration = Calibration.judge(c, correct: f, expected: e)
                }
                if let first = r.comparisons.first(where: \.calibrationFailed), let aAct = actualIsA(first) {
                    r.diagnosis = try Calibration.diagnose(first, expected: (aAct ? fullB : fullA)[first.name]!, setup: try getSetup())
                }
            }
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
