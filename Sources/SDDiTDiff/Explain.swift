import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast

// `oracle diff --explain`: a failing file's cause, named from the catalogue (Divergences.swift)
// by evidence. A divergence explains the file when the fast path rerun with it on the file's
// setup agrees with the file on every dataset the file records, each within the rule it is
// judged by (the precision rule, the after-step rule with the rerun's config, and for
// calibrated tensors x(limit + 1) the level of a correct run in the file's mode, the +1 for
// the rerun's own rounding), where the rerun without it did not. Candidates are the
// divergences that can act at the first dataset the file disagrees at; when the best one
// moves that point on without reaching the end, the search goes on from there with it (up to
// three together), so two bugs are named together or not at all. A best candidate that parts
// late within x4 of its limit is judged again at its own conditioning (`conditioning`, at most
// x4 a correct run's level): a divergence can make the network amplify rounding more than a
// correct one (docs/DECISIONS.md 44). Closed-form fits of the
// step (AdamW's lr, weight decay and eps, the EMA's beta and order, the centers' momentum),
// of the DINO temperatures and of a forward tensor's factor or permutation give the values
// the config-value candidates carry, and are reported as they are.

/// One line of an explanation, for people and for `--json`.
public struct Explanation: Sendable {
    public enum Kind: String, Sendable { case explained, notExplained = "not_explained", fit, tried }
    public var kind: Kind
    public var text: String
    /// The catalogue ids involved (a composition has several).
    public var divergences: [String] = []
    /// The last dataset the rerun agreed with before its first disagreement (nil: none).
    public var agreesUpTo: String? = nil
    /// Its first disagreement (nil: it agrees everywhere).
    public var firstDisagreement: String? = nil

    public var line: String {
        switch kind {
        case .explained: return "explained by: " + text
        case .notExplained: return text
        case .fit: return "fit: " + text
        case .tried: return "  tried: " + text
        }
    }
    public var json: [String: Any] {
        ["kind": kind.rawValue, "text": text, "divergences": divergences,
         "agrees_up_to": agreesUpTo ?? NSNull(), "first_disagreement": firstDisagreement ?? NSNull()]
    }
}

public enum Explainer {
    /// At most this many divergences together.
    static let maxTogether = 3

    /// The explanation of file `path`'s failure (`report` its diff against a backend), or
    /// nothing when it passed.
    public static func explain(_ path: String, report: DiffReport, options o: DiffOptions) throws -> [Explanation] {
        guard !report.passed, !report.comparisons.isEmpty else { return [] }
        let file = try ExchangeFile.read(path, resultsOnDemand: true)
        let mode = report.mode.flatMap(PrecisionMode.init(rawValue:)) ?? .float32
        let e = try ExplainRuns(file, mode: mode == .float64 ? .float32 : mode, memory: o.memory)
        return try e.explain()
    }
}

/// The agreement of a rerun with the file.
struct Agreement {
    /// Index into the file's paths of the first disagreement (nil: agrees everywhere).
    var first: Int?
    /// Per calibrated path, the file's error against the rerun over the level of a correct run.
    var ratios: [String: Double] = [:]
    var rank: Int { first ?? Int.max }
}

/// The runs an explanation compares: the truth, a correct run in the mode (the levels), and
/// the reruns with divergences.
final class ExplainRuns {
    let file: ExchangeFile, side: DiffSide, setup: RunSetup, cfg: ModelConfig
    let mode: PrecisionMode, backend: Backend, memory: Double?
    /// The file's compared datasets in `DatasetOrder`.
    let paths: [String]
    let truth: [String: NamedTensor]
    private(set) var levels: [String: Double] = [:]
    let catalogue: [Divergence]
    private(set) var reruns = 0

    init(_ file: ExchangeFile, mode: PrecisionMode, memory: Double?) throws {
        self.file = file; self.mode = mode; self.memory = memory
        side = DiffSide(file: file)
        let s = try file.runSetup()
        cfg = s.config
        setup = s
        backend = mode.backend ?? .fast
        paths = DatasetOrder.sorted(file.index.keys.filter { !ExchangeFile.isSetup($0) && !$0.hasPrefix("params/") && $0 != "sampler/sigmas" }, cfg)
        truth = try Backend.ref.run(setup, memory: memory)
        let clean = try backend.run(setup, memory: memory)
        catalogue = Divergences.catalogue(cfg)
        for p in paths {
            guard let t = truth[p], let f = clean[p], let x = try side.forComparison(p),
                  let l = Calibration.level(correct: f, truth: t, storage: min(x.precision, mode.label), mode: mode) else { continue }
            levels[p] = l
        }
        base = try agreement(clean, cfg, [])
    }
    private(set) var base = Agreement(first: nil)

    func name(_ i: Int?) -> String { i.map { paths[$0] } ?? "the end" }
    /// Where a rerun parts from the file, with the error there when the calibrated rule failed.
    func parting(_ a: Agreement) -> String {
        guard let i = a.first else { return "nowhere" }
        return paths[i] + (a.ratios[paths[i]].map { String(format: " (x%.3g the %@ level)", $0, mode.rawValue) } ?? "")
    }

    /// The rerun with `ds` applied, and its agreement with the file (`scale`: per path, a
    /// factor on the level of a correct run; `perturbed`: x0 moved by one float32 rounding).
    func rerun(_ ds: [Divergence], scale: [String: Double] = [:], perturbed: Bool = false) throws -> (results: [String: NamedTensor], agreement: Agreement) {
        var s = setup, v = FastVariant()
        s.config = configured(ds)
        for d in ds { v = v.merged(with: d.variant) }
        if perturbed, var I = s.inputs {
            // x0 (1 + 2^-24 r), r = +-1 alternating with a fixed pattern: the float32 input
            // rounds differently in about half its elements, the run's own rounding noise
            for i in 0..<I.x0.data.count { I.x0.data[i] *= 1 + (i % 3 == 0 ? -1.0 : 1.0) * 0x1p-24 }
            s.inputs = I
        }
        reruns += 1
        let r = try backend.run(s, memory: memory, variant: v)
        return (r, try agreement(r, s.config, ds, scale: scale))
    }

    /// The file's config with the values of `ds`.
    func configured(_ ds: [Divergence]) -> ModelConfig {
        var c = cfg
        for d in ds { d.apply(&c) }
        return c
    }

    /// How much more a rerun with `ds` amplifies rounding than a correct run, per path: the
    /// change one float32 rounding of x0 makes in its results over the change it makes in a
    /// correct run's (a divergence can make the network worse conditioned, and the level of a
    /// correct run then understates the rerun's own error), at least 1 and at most
    /// `ExplainRuns.maxConditioning`.
    func conditioning(_ ds: [Divergence], _ r: [String: NamedTensor]) throws -> [String: Double] {
        if cleanProbe == nil {
            let c = try backend.run(setup, memory: memory), p = try rerun([], perturbed: true).results
            cleanProbe = Dictionary(uniqueKeysWithValues: paths.compactMap { q in
                guard let a = c[q], let b = p[q], let n = Calibration.normwise(b.values, a.values) else { return nil }
                return (q, max(n, CalibrationLimits.floorUnits * Precision.float32.unitRoundoff))
            })
        }
        let p = try rerun(ds, perturbed: true).results
        var out: [String: Double] = [:]
        for q in paths {
            guard let a = r[q], let b = p[q], let n = Calibration.normwise(b.values, a.values), let c = cleanProbe?[q] else { continue }
            out[q] = min(max(n / c, 1), Self.maxConditioning)
        }
        return out
    }
    private var cleanProbe: [String: Double]? = nil
    /// The most a divergence's conditioning may raise the level it is judged by.
    static let maxConditioning = 4.0

    /// Whether the file agrees with run `r` (made with config `c` and divergences `ds`), dataset by dataset.
    func agreement(_ r: [String: NamedTensor], _ c: ModelConfig, _ ds: [Divergence], scale: [String: Double] = [:]) throws -> Agreement {
        var a = Agreement(first: nil)
        let limitExtra = CalibrationLimits.againstModeExtra
        for (i, p) in paths.enumerated() {
            guard var x = try side.forComparison(p), let y = r[p] else { continue }
            x.precision = min(x.precision, mode.resultLabel(p))
            let ctx = try afterStepContext(p, r, c, ds)
            let v = DiffEngine.verdict(p, x, y, ctx, lr: c.lr)
            var ok = v.passed
            if ok, Calibration.applies(v, p), let l = levels[p].map({ $0 * (scale[p] ?? 1) }) {
                let ratio = (Calibration.normwise(x.values, y.values) ?? .infinity) / l
                a.ratios[p] = ratio
                ok = ratio <= CalibrationLimits.limit(mode, path: p) + limitExtra
            }
            if !ok { a.first = i; return a }
        }
        return a
    }

    /// The after-step rule's data for path `p`, with the step the divergences `ds` make written
    /// as SPEC's step with other values, so that each side's step is judged by the rule from
    /// its own gradient: no bias correction is lr (1 - b1) / sqrt(1 - b2) and eps / sqrt(1 - b2);
    /// the EMA reversed is beta -> 1 - beta; the EMA before the step blends p0 for p1; a
    /// frozen tensor has no gradient (it must stay p0).
    private func afterStepContext(_ p: String, _ r: [String: NamedTensor], _ c: ModelConfig, _ ds: [Divergence]) throws -> AfterStepContext {
        var v = FastVariant()
        for d in ds { v = v.merged(with: d.variant) }
        var c = c
        if v.adamNoBiasCorrection {
            c.lr *= (1 - c.adamBeta1) / (1 - c.adamBeta2).squareRoot(); c.adamEps /= (1 - c.adamBeta2).squareRoot()
        }
        if v.emaReversed { c.emaBeta = 1 - c.emaBeta }
        var key: String? = nil
        if p.hasPrefix("after_step/params/") { key = String(p.dropFirst(18)) }
        if p.hasPrefix("after_step/teacher/") { key = String(p.dropFirst(19)) }
        var bef: [String: NamedTensor] = [:], dA: [String: NamedTensor] = [:], dB: [String: NamedTensor] = [:]
        if let k = key {
            for q in ["params/" + k, "teacher/" + k] { bef[q] = try file.dataset(q) }
            for q in ["grads/" + k, "after_step/params/" + k] { dA[q] = try side.get(q); dB[q] = r[q] }
            if let f = v.frozenPrefix, k.hasPrefix(f) { dA["grads/" + k] = nil; dB["grads/" + k] = nil }
            if v.emaBeforeStep, p.hasPrefix("after_step/teacher/") { dA["after_step/params/" + k] = bef["params/" + k]; dB["after_step/params/" + k] = bef["params/" + k] }
        }
        return AfterStepContext(c, before: bef, sideA: dA, sideB: dB, sideAHasGradients: side.hasGradients, sideBHasGradients: true)
    }

    /// The catalogue entries (and fitted values) that can act at path index `at`: their first
    /// dataset is at or before it, and is it, is not recorded, or agreed there while already a
    /// quarter of the limit off a correct rerun; a group (`after_step/params/`) holds it, or is
    /// unrecorded and comes before it.
    func candidates(at i: Int, fitted: [Divergence]) -> [Divergence] {
        let f = paths[i], fk = DatasetOrder.sortKey(f, cfg)
        return (catalogue + fitted).filter { d in
            if d.actsFrom.hasSuffix("/") {   // a group: F in it, or the group unrecorded and before F
                return f.hasPrefix(d.actsFrom) || (!paths.contains { $0.hasPrefix(d.actsFrom) } && DatasetOrder.sortKey(d.actsFrom + "~", cfg) <= fk)
            }
            guard DatasetOrder.sortKey(d.actsFrom, cfg) <= fk else { return false }
            // its first dataset: F itself, unrecorded, or agreeing but already off a correct
            // rerun by a quarter of the limit (a subtle divergence below resolution there)
            let elevated = base.ratios[d.actsFrom].map { $0 >= CalibrationLimits.limit(mode, path: d.actsFrom) / 4 } ?? false
            return d.actsFrom == f || !paths.contains(d.actsFrom) || elevated
        }
    }

    /// The ratio at path `p` in words.
    func level(_ a: Agreement, at p: String) -> String {
        guard let r = a.ratios[p] else { return "" }
        return String(format: "; x%.2g the %@ level at %@", r, mode.rawValue, p)
    }

    func explain() throws -> [Explanation] {
        guard let start = base.first else {
            return [Explanation(kind: .notExplained, text: "the file agrees with a correct \(mode.rawValue) rerun of its setup everywhere: nothing to explain (its failure is in the comparison's own rules, not a divergence)")]
        }
        var out: [Explanation] = []
        let fits = try ExplainFits(self)
        out += fits.lines
        var chosen: [Divergence] = [], at = start, best = base, tried = 0
        var conditioned = Set<String>()
        for round in 0..<Explainer.maxTogether {
            var results: [(Divergence, Agreement)] = []
            for d in candidates(at: at, fitted: fits.candidates) where !chosen.contains(where: { $0.id == d.id }) {
                let (_, a) = try rerun(chosen + [d])
                results.append((d, a))
            }
            tried += results.count
            results.sort { $0.1.rank > $1.1.rank }
            // the best one parts late, near its limit: judged again with its own conditioning
            if case (let d, var a)? = results.first, let f = a.first, f > at, let r = a.ratios[paths[f]],
               r <= Self.maxConditioning * CalibrationLimits.limit(mode, path: paths[f]) {
                let run = try rerun(chosen + [d]).results
                a = try agreement(run, configured(chosen + [d]), chosen + [d], scale: try conditioning(chosen + [d], run))
                if a.rank > results[0].1.rank { results[0] = (d, a); conditioned.insert(d.id) }
            }
            if round == 0 {
                for (d, a) in results.prefix(12) {
                    out.append(Explanation(kind: .tried, text: "\(d.cause): " + (a.first == nil ? "agrees everywhere" :
                        a.rank > at ? "agrees up to \(name(a.rank - 1)), parts at \(parting(a))" + level(a, at: paths[at]) : "parts at \(parting(a)) already"),
                        divergences: [d.id],
                        agreesUpTo: a.first == nil ? paths.last : a.rank > 0 ? name(a.rank - 1) : nil, firstDisagreement: a.first.map { paths[$0] }))
                }
                if results.count > 12 { out.append(Explanation(kind: .tried, text: "... and \(results.count - 12) more, none further")) }
            }
            guard let (d, a) = results.first, a.rank > at else { break }
            chosen.append(d); best = a
            guard let next = a.first else {
                let worst = a.ratios.filter { paths.firstIndex(of: $0.key).map { $0 >= start } ?? false }.max { $0.value < $1.value }
                let cause = chosen.map { "\($0.cause) (\($0.spec); as in: \($0.sources))" }.joined(separator: " + ")
                var tail = worst.map { String(format: " (worst x%.2g the %@ level, at %@)", $0.value, mode.rawValue, $0.key) } ?? ""
                if chosen.contains(where: { conditioned.contains($0.id) }) {
                    tail += String(format: "; judged with the rerun's own conditioning (at most x%g the level of a correct run)", Self.maxConditioning)
                }
                out.insert(Explanation(kind: .explained, text: "\(cause): with \(chosen.count == 1 ? "it" : "them") the \(mode.rawValue) rerun agrees with the file on every dataset from \(paths[start]) on\(tail)",
                                       divergences: chosen.map(\.id), agreesUpTo: paths.last, firstDisagreement: nil), at: 0)
                return out
            }
            at = next
        }
        let n = catalogue.count + fits.candidates.count
        var text = "not explained by any of \(n) known divergences (alone or up to \(Explainer.maxTogether) together; \(tried) reruns): the cause is outside the catalogue (README \"Naming the bug\")"
        if !chosen.isEmpty, let f = best.first { text += "; furthest: \(chosen.map(\.cause).joined(separator: " + ")) agrees up to \(name(f - 1)), parts at \(parting(best))" }
        out.insert(Explanation(kind: .notExplained, text: text, divergences: chosen.map(\.id), agreesUpTo: nil, firstDisagreement: best.first.map { paths[$0] }), at: 0)
        return out
    }
}
