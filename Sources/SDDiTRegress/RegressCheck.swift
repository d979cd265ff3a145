import Foundation
import SDDiTCore

/// Per-metric-kind thresholds (regress/thresholds.json). An error or gradcheck metric
/// regresses when new > max(factor * old, floor), floor = max(floorAbs, floorFraction * tol)
/// (tol: the tolerance the metric is judged against), or when it passed its tolerance before
/// and fails now, or turns non-finite. A timing regresses when
/// new median > old median * (1 + percent/100) + k * (old spread + new spread) + minMs,
/// spread = 1.4826 x the median absolute deviation of the repeats (and the fastest new repeat
/// must also be slower than old * (1 + percent/100)); timings are compared only on the same machine
/// fingerprint (CPU, cores, OpenBLAS kernels, threads).
public struct RegressThresholds: Codable, Sendable, Equatable {
    public struct ErrorRule: Codable, Sendable, Equatable {
        public var factor: Double
        public var floorFraction: Double
        public var floorAbs: Double
        enum CodingKeys: String, CodingKey { case factor, floorFraction = "floor_fraction_of_tolerance", floorAbs = "floor_abs" }
        public init(factor: Double, floorFraction: Double, floorAbs: Double) { self.factor = factor; self.floorFraction = floorFraction; self.floorAbs = floorAbs }
        public func floor(tol: Double?) -> Double { max(floorAbs, floorFraction * (tol ?? 0)) }
    }
    public struct TimingRule: Codable, Sendable, Equatable {
        public var percent: Double
        public var spreadK: Double
        public var minMs: Double
        public var acrossMachines: Bool
        enum CodingKeys: String, CodingKey { case percent, spreadK = "spread_k", minMs = "min_ms", acrossMachines = "compare_across_machines" }
        public init(percent: Double, spreadK: Double, minMs: Double, acrossMachines: Bool) {
            self.percent = percent; self.spreadK = spreadK; self.minMs = minMs; self.acrossMachines = acrossMachines
        }
    }
    public var notes: [String]
    public var error: ErrorRule
    public var gradcheck: ErrorRule
    public var timing: TimingRule
    /// Metrics that disappear from a run of the same battery are regressions.
    public var missingIsRegression: Bool
    enum CodingKeys: String, CodingKey { case notes, error, gradcheck, timing, missingIsRegression = "missing_is_regression" }

    public static let defaults = RegressThresholds(
        notes: [
            "Thresholds of `oracle regress check` (see docs/DECISIONS.md, 'Regression tracking').",
            "error/* (max rel of a tensor against the float64 reference, oracle diff's rule): regressed when new > max(factor * old, floor) with floor = max(floor_abs, floor_fraction_of_tolerance * rtol of that tensor), or when it passed its tolerance before and fails now, or is non-finite.",
            "factor 4: a real change of a kernel or of rounding moves errors by orders of magnitude; run-to-run they are bit-identical (same seed, same threads), and 4x leaves room for a different thread count or BLAS kernel set.",
            "floor: 0.1% of the tensor's own tolerance (float64 pairs 1e-12, float32 1e-7, fp16 9.8e-6, bf16 7.8e-5), so noise far below what the diff accepts (1e-16 -> 5e-16 in float64 against float64) is not a regression, while float32 errors (measured 1e-7 to 1e-6) are judged.",
            "after_step/params and after_step/teacher errors: AdamW's first step moves an entry whose gradient is rounding noise by up to lr either way (SPEC hazard 2), so a new BLAS kernel set flips such entries (measured: x124 in max rel, fp16, Prescott -> SkylakeX); while the max abs stays within the diff's lr allowance (noise_abs in the record: lr or 2 lr) only 'passed -> fails' counts.",
            "gradcheck/* (directional derivative of the reference vs 5-point differences): same rule; measured on tiny: median 1.2e-10, worst 2.2e-9 relative (deterministic: the reference is bit-identical run to run); floor 1e-10 (0.1% of rtol 1e-7).",
            "timing/* (median ms of repeated runs): regressed when new > old * (1 + percent/100) + spread_k * (old spread + new spread) + min_ms, spread = 1.4826 x the median absolute deviation of the repeats, and even the fastest new repeat is slower than old * (1 + percent/100); only on the same machine fingerprint (CPU model, cores, OpenBLAS kernels, threads) unless compare_across_machines.",
            "these shared 2-core machines vary by 5-15% between runs: percent 25.",
        ],
        error: ErrorRule(factor: 4, floorFraction: 0.001, floorAbs: 1e-15),
        gradcheck: ErrorRule(factor: 4, floorFraction: 0.001, floorAbs: 1e-12),
        timing: TimingRule(percent: 25, spreadK: 2, minMs: 0.05, acrossMachines: false),
        missingIsRegression: true)

    public static func load(_ store: RegressStore) throws -> (RegressThresholds, fromFile: Bool) {
        guard FileManager.default.fileExists(atPath: store.thresholdsURL.path) else { return (defaults, false) }
        do {
            return (try JSONDecoder().decode(RegressThresholds.self, from: Data(contentsOf: store.thresholdsURL)), true)
        } catch {
            throw RegressError("thresholds file '\(store.thresholdsURL.path)': \(RegressStore.describe(error))")
        }
    }

    public func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try e.encode(self) + Data("\n".utf8)
    }
}

public struct RegressFinding: Sendable {
    public enum Verdict: String, Sendable { case regressed = "REGRESSED", improved = "improved", missing = "MISSING", ok }
    public var metric: String
    public var verdict: Verdict
    public var old: RegressMetric?
    public var new: RegressMetric?
    /// The value the new one had to stay under.
    public var limit: Double
    public var why: String

    public var ratio: Double? {
        guard let o = old?.value, let n = new?.value, o > 0 else { return nil }
        return n / o
    }

    public func line() -> String {
        let kind = RegressRecord.kind(metric)
        guard let o = old else { return "\(verdict.rawValue) \(metric): \(why)" }
        guard let n = new else { return "\(verdict.rawValue) \(metric): in the baseline (\(Self.g(o.value))), not in the latest run; \(why)" }
        let r = ratio.map { String(format: " (x%.3g)", $0) } ?? ""
        if kind == "timing" {
            return String(format: "%@ %@: median %.3f ms -> %.3f ms%@ (spread %.3f -> %.3f ms); limit %.3f ms; %@",
                          verdict.rawValue, metric, o.value, n.value, r, o.spread ?? 0, n.spread ?? 0, limit, why)
        }
        var s = "\(verdict.rawValue) \(metric): max rel \(Self.g(o.value)) -> \(Self.g(n.value))\(r)"
        if let oa = o.maxAbs, let na = n.maxAbs { s += ", max abs \(Self.g(oa)) -> \(Self.g(na))" }
        s += "; limit \(Self.g(limit))"
        if let t = n.tol { s += " (tolerance rtol \(Self.g(t)): " + ((o.pass ?? true) ? "passed" : "failed") + " -> " + ((n.pass ?? true) ? "passes" : "FAILS") + ")" }
        if !why.isEmpty { s += "; " + why }
        return s
    }
    static func g(_ x: Double) -> String { x.isFinite ? String(format: "%.3g", x) : "\(x)" }
}

public struct RegressCheckResult: Sendable {
    public var baseline: String, latest: String
    public var findings: [RegressFinding] = []
    public var compared = 0
    public var timingsSkipped: String?
    public var newMetrics: [String] = []
    public var notes: [String] = []
    public var regressions: [RegressFinding] { findings.filter { $0.verdict == .regressed || $0.verdict == .missing } }
    public var passed: Bool { regressions.isEmpty }

    /// The group of a metric for the listing: "error tiny/fast activations", "gradcheck tiny", "timing tiny".
    public static func group(_ name: String) -> (key: String, rank: [Int], order: Int) {
        if let p = RegressReport.errorParts(name) {
            let c = ["tiny": 0, "S2": 1, "fixture": 2][p.config] ?? 3
            let m = RegressBattery.modes.map(\.rawValue).firstIndex(of: p.mode) ?? (p.mode == "ref" ? 10 : 11)
            let g = RegressReport.groupOrder.firstIndex(of: p.group) ?? 50
            let label = p.config == "fixture" ? "error fixture \(p.group) vs \(p.mode)" : "error \(p.config)/\(p.mode) \(p.group)"
            return (label, [c, p.config == "fixture" ? 0 : m, g, p.config == "fixture" ? m : 0], 0)
        }
        let parts = name.split(separator: "/").map(String.init)
        let k = RegressRecord.kind(name)
        return ("\(k) \(parts.count > 1 ? parts[1] : "")", [k == "gradcheck" ? 4 : 5], 0)
    }

    public struct GroupSummary: Sendable {
        public var group: String, regressed: Int, compared: Int
        public var first: RegressFinding, worst: RegressFinding
        public var line: String {
            func short(_ m: String) -> String { RegressReport.errorParts(m)?.tensor ?? m }
            func x(_ f: RegressFinding) -> String { f.ratio.map { String(format: " (x%.3g)", $0) } ?? "" }
            return "\(group): \(regressed) of \(compared) regressed; first \(short(first.metric))\(x(first)); worst \(short(worst.metric))\(x(worst))"
        }
    }

    /// The groups with a regressed or missing metric, in forward / comparison order: each
    /// with its metrics compared and the bad ones.
    func regressedGroups() -> [(key: String, value: (rank: [Int], all: Int, bad: [RegressFinding]))] {
        var groups: [String: (rank: [Int], all: Int, bad: [RegressFinding])] = [:]
        for f in findings {
            let g = Self.group(f.metric)
            groups[g.key, default: (g.rank, 0, [])].all += 1
            if f.verdict == .regressed || f.verdict == .missing { groups[g.key, default: (g.rank, 0, [])].bad.append(f) }
        }
        return groups.filter { !$0.value.bad.isEmpty }
            .sorted { ($0.value.rank.lexicographicallyPrecedes($1.value.rank)) || ($0.value.rank == $1.value.rank && $0.key < $1.key) }
    }

    /// One entry per group with a regression, in forward / comparison order of the groups.
    public func groupSummaries() -> [GroupSummary] {
        regressedGroups().map { k, v in
                GroupSummary(group: k, regressed: v.bad.count, compared: v.all,
                             first: v.bad.min { ($0.old?.order ?? $0.new?.order ?? 0) < ($1.old?.order ?? $1.new?.order ?? 0) }!,
                             worst: v.bad.max { ($0.ratio ?? .infinity) < ($1.ratio ?? .infinity) }!)
            }
    }

    /// Per group of regressed metrics: a count and the first in forward order; then each
    /// regression with both values (at most `perGroup` a group unless verbose), then a
    /// summary per kind and the verdict.
    public func lines(verbose: Bool = false, perGroup: Int = 8) -> [String] {
        var out = ["oracle regress check: latest \(latest) against baseline \(baseline)"]
        out += notes.map { "note: " + $0 }
        let badGroups = regressedGroups()
        if !badGroups.isEmpty {
            out.append("regressed, by group (first = earliest in forward / comparison order):")
            out += groupSummaries().map { "  " + $0.line }
            for (_, v) in badGroups {
                let sorted = v.bad.sorted { ($0.ratio ?? .infinity) > ($1.ratio ?? .infinity) }
                let shown = verbose ? sorted : Array(sorted.prefix(perGroup))
                out += shown.map { $0.line() }
                if shown.count < sorted.count { out.append("  ... and \(sorted.count - shown.count) more in this group (--verbose lists all)") }
            }
        }
        let imp = findings.filter { $0.verdict == .improved }
        if verbose { out += imp.map { $0.line() } }
        if let t = timingsSkipped { out.append("timings not compared: \(t)") }
        var kinds: [String: (Int, Int)] = [:]
        for f in findings where f.verdict != .missing { let k = RegressRecord.kind(f.metric); kinds[k, default: (0, 0)].0 += 1; if f.verdict == .regressed { kinds[k]!.1 += 1 } }
        for (k, v) in kinds.sorted(by: { $0.key < $1.key }) { out.append("  \(k): \(v.0) compared, \(v.1) regressed") }
        if !newMetrics.isEmpty { out.append("  \(newMetrics.count) metrics new in the latest run (not judged)") }
        let reg = regressions
        out.append("compared \(compared), regressed \(reg.filter { $0.verdict == .regressed }.count), missing \(reg.filter { $0.verdict == .missing }.count), improved \(imp.count)"
                   + (passed ? ": no regression" : ": REGRESSION"))
        return out
    }
}

public enum RegressCheck {
    public static func compare(baseline b: RegressRecord, latest l: RegressRecord, thresholds t: RegressThresholds) -> RegressCheckResult {
        var res = RegressCheckResult(baseline: b.id, latest: l.id)
        if l.notes.contains(where: { $0.hasPrefix("PERTURBED") }) { res.notes.append("the latest run was made with a perturbed kernel (SDDIT_ORACLE_PERTURB)") }
        if b.notes.contains(where: { $0.hasPrefix("PERTURBED") }) { res.notes.append("the baseline was made with a perturbed kernel (SDDIT_ORACLE_PERTURB): pick another with --baseline") }
        if b.battery != l.battery { res.notes.append("batteries differ (baseline \(b.battery), latest \(l.battery)): only shared metrics are compared") }
        let sameMachine = b.machine.fingerprint == l.machine.fingerprint
        // The fast path's bits depend on the CPU and OpenBLAS kernel set (not on the threads):
        // across those, its error metrics are judged only on their verdict.
        let sameKernels = b.machine.cpu == l.machine.cpu && b.machine.openblasCore == l.machine.openblasCore
        if !sameKernels {
            res.notes.append("different CPU or OpenBLAS kernels (baseline \(b.machine.cpu), \(b.machine.openblasCore); latest \(l.machine.cpu), \(l.machine.openblasCore)): fast-path errors round differently there, so only their verdict (passed -> fails) is judged")
        }
        if !sameMachine && !t.timing.acrossMachines {
            res.timingsSkipped = "different machines (baseline: \(b.machine.fingerprint); latest: \(l.machine.fingerprint))"
        }
        for name in b.metrics.keys.sorted() {
            let o = b.metrics[name]!
            let kind = RegressRecord.kind(name)
            guard let n = l.metrics[name] else {
                if b.battery == l.battery && t.missingIsRegression && (kind != "timing" || res.timingsSkipped == nil) {
                    res.findings.append(RegressFinding(metric: name, verdict: .missing, old: o, new: nil, limit: o.value, why: "the same battery no longer produces it"))
                }
                continue
            }
            if kind == "timing" {
                if res.timingsSkipped != nil { continue }
                let r = t.timing
                let limit = o.value * (1 + r.percent / 100) + r.spreadK * ((o.spread ?? 0) + (n.spread ?? 0)) + r.minMs
                res.compared += 1
                let better = n.value < o.value * (1 - r.percent / 100) - r.spreadK * ((o.spread ?? 0) + (n.spread ?? 0)) - r.minMs
                // and even the fastest new repeat slower than old * (1 + percent/100): one slow
                // stretch of a shared machine moves the median, rarely every repeat
                let fastest = n.runs?.min() ?? n.value
                let slower = n.value > limit && fastest > o.value * (1 + r.percent / 100)
                let why = String(format: "limit = +%.0f%% + %.3g x spreads + %.3g ms; fastest new repeat %.3f ms", r.percent, r.spreadK, r.minMs, fastest)
                res.findings.append(RegressFinding(metric: name, verdict: slower ? .regressed : better ? .improved : .ok,
                                                   old: o, new: n, limit: limit, why: why))
                continue
            }
            let rule = kind == "gradcheck" ? t.gradcheck : t.error
            let floor = rule.floor(tol: n.tol ?? o.tol)
            let limit = max(rule.factor * o.value, floor)
            res.compared += 1
            var verdict: RegressFinding.Verdict = .ok, why = ""
            if !n.value.isFinite && o.value.isFinite {
                verdict = .regressed; why = "non-finite or shape mismatch now"
            } else if (o.pass ?? true) && n.pass == false {
                verdict = .regressed; why = "now outside its tolerance"
            } else if n.value > limit, n.tol == 1, name.contains("/after_step/params/") || name.contains("/after_step/teacher/") {
                // the after-step rule's metric is the use of each element's Adam-step interval
                // (AfterStepRule): it moves with any rounding; only "passed -> fails" counts
                why = String(format: "the use of its Adam-step interval grew past %gx; judged on its verdict only", rule.factor)
            } else if n.value > limit, !sameKernels, name.contains("/fast") {
                why = String(format: "grew past %gx on other kernels; judged on its verdict only", rule.factor)
            } else if n.value > limit, let allow = n.noiseAbs ?? o.noiseAbs, let a = n.maxAbs, a <= allow {
                // after-step parameters: AdamW's first step moves an entry with a noise gradient
                // by up to lr either way (SPEC hazard 2), so any rounding change (a kernel, a
                // BLAS build) can flip such entries; within that allowance only "now outside
                // its tolerance" counts
                why = String(format: "grew past %gx but max abs %.3g stays within the lr allowance %.3g", rule.factor, a, allow)
            } else if n.value > limit {
                verdict = .regressed; why = String(format: "grew past %gx (floor %.3g)", rule.factor, floor)
            } else if n.value * rule.factor < o.value && o.value > floor {
                verdict = .improved
            }
            res.findings.append(RegressFinding(metric: name, verdict: verdict, old: o, new: n, limit: limit, why: why))
        }
        res.newMetrics = l.metrics.keys.filter { b.metrics[$0] == nil }.sorted()
        return res
    }
}
