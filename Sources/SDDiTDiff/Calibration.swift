import Foundation
import SDDiTCore
import SDDiTExchange

/// Calibrated verdicts (docs/DECISIONS.md 26, 42): a file's tensor fails when its norm-wise
/// error, max|a - e| / max|e|, is far above that of a correct run in the file's precision mode
/// on the same setup: ratio = error / level, level = the norm-wise error of the fast path in
/// that mode against the float64 reference (floored in float32 units, in units of the file's
/// own storage type, and for a scalar in units of the mode's type). Against the mode's own
/// backend (`--b fast-bf16`) the file's distance to that run is judged against the same
/// level, with one level more of room (|file - run| <= |file - truth| + |run - truth|).
///
/// The limits and floors, each with its reason, are `CalibrationLimits` (SDDiTCore's
/// Tolerances.swift, beside every other tolerance); the blanket element-wise rule of
/// `Tolerances` stays as a ceiling.
public enum Calibration {
    /// Whether comparison `c` (the file on side a when `fileIsA`) is judged by calibration:
    /// a finite, same-shape tensor of the results other than the after-step parameters and
    /// teacher (`AfterStepRule` judges each side's own step) and the setup's fixed tables.
    static func applies(_ c: Comparison, _ p: String) -> Bool {
        guard !c.shapeMismatch, c.nonFinite == nil else { return false }
        return !(p.hasPrefix("after_step/params/") || p.hasPrefix("after_step/teacher/") || p.hasPrefix("params/") || p == "sampler/sigmas")
    }

    /// The norm-wise error of `x` against `e`: max|x - e| / max|e| (max|x - e| when e is 0).
    public static func normwise(_ x: [Double], _ e: [Double]) -> Double? {
        guard x.count == e.count else { return nil }
        var m = 0.0, s = 0.0
        for i in 0..<e.count {
            guard x[i].isFinite else { return nil }
            m = max(m, abs(x[i] - e[i])); s = max(s, abs(e[i]))
        }
        return s > 0 ? m / s : m
    }

    /// The level of a correct run `f` against the truth `e`, floored (see the type's doc);
    /// `storage`: the precision the file stores this tensor in.
    static func level(correct f: NamedTensor, truth e: NamedTensor, storage: Precision, mode: PrecisionMode) -> Double? {
        guard let n = normwise(f.values, e.values) else { return nil }
        let u32 = Precision.float32.unitRoundoff, L = CalibrationLimits.self
        return max(n, L.floorUnits * u32, storage < .float32 ? L.storageFloorUnits * storage.unitRoundoff : 0,
                   e.values.count == 1 ? L.scalarFloor(mode) : 0)
    }
}

/// What a file's numbers say about the precision it ran in, and what a verdict in a mode
/// cannot see.
struct ModeEvidence {
    /// The mode the file is judged in, and why (declared, asked for, or seen in its values).
    var mode: PrecisionMode
    var source: String
    var notes: [String] = []
    /// The half type the file's stored values show its products in (nil: none).
    var seenHalf: Precision? = nil

    /// Product tensors whose stored values show the type a run kept them in (fp16 / bf16
    /// autocast stores every matmul's output in the half type; TF32 and float32 do not).
    static let products = ["student.F", "student.head.cls", "student.head.patch", "teacher.head.cls", "teacher.head.patch"]

    /// The mode of `file`: as declared; else that of the backend it is compared against; else
    /// from its values (half types by storage or exact values, float32 also when stored as
    /// float64). nil: a float64 file (judged by the float64 rule).
    static func infer(_ file: ExchangeFile, against other: Backend?) throws -> ModeEvidence? {
        let results = file.index.filter { !ExchangeFile.isSetup($0.key) && !$0.key.hasPrefix("params/") && $0.key != "sampler/sigmas" }
        let seen = try valuesMode(file, results: results)
        // a float64 file is the more precise side: against a fast backend it is that backend
        // which is judged (by the blanket rule of its precision), as before calibration
        if file.declaredMode == .float64 || (file.declaredMode == nil && (seen == nil || seen?.mode == .float64)) { return nil }
        var e: ModeEvidence
        if let asked = other?.mode {
            e = ModeEvidence(mode: asked, source: "as compared (--b \(other!.rawValue))")
            if let d = file.declaredMode, d != asked {
                e.notes.append("note: the file declares precision_mode \(d.rawValue); judged as \(asked.rawValue), as asked")
            }
            if let s = seen, s.mode.storesHalf != asked.storesHalf, s.mode.storesHalf != nil {
                e.notes.append("note: \(s.source); judged as \(asked.rawValue), as asked")
            }
        } else if let d = file.declaredMode {
            e = ModeEvidence(mode: d, source: "as the file declares (precision_mode)")
            if let s = seen, s.mode.storesHalf != d.storesHalf, s.mode.storesHalf != nil || d.storesHalf != nil, s.mode != .float64 {
                e.notes.append("note: the file declares \(d.rawValue), but \(s.source)")
            }
        } else {
            guard let s = seen else { return nil }
            e = s
        }
        e.seenHalf = seen?.mode.storesHalf
        return e
    }

    /// The mode a file's stored values show: half types by dataset type or exact half values
    /// in its products; float32 for float32 results (or float64 datasets holding only float32
    /// values); float64 otherwise.
    static func valuesMode(_ file: ExchangeFile, results: [String: (shape: [Int], precision: Precision)]) throws -> ModeEvidence? {
        guard !results.isEmpty else { return nil }
        let precisions = Set(results.values.map(\.precision))
        let pure = try paramsHold(file)
        func half(_ h: Precision, _ why: String) -> ModeEvidence {
            let isPure = pure == h
            let m: PrecisionMode = h == .float16 ? (isPure ? .fp16Pure : .fp16Autocast) : (isPure ? .bf16Pure : .bf16Autocast)
            return ModeEvidence(mode: m, source: why + (isPure ? ", its gradients and parameters too (every stored tensor in the half type)" : ""))
        }
        if precisions.contains(.float16) { return half(.float16, "its results are stored as fp16") }
        if precisions.contains(.bfloat16) { return half(.bfloat16, "its results are stored as bfloat16") }
        var exactB = 0, exactH = 0, exact32 = 0, looked = 0
        for name in products {
            guard let d = try file.dataset("activations/" + name), d.values.count >= 16 else { continue }
            looked += 1
            if Precision.bfloat16.holdsExactly(d.values) { exactB += 1 }
            else if Precision.float16.holdsExactly(d.values) { exactH += 1 }
            else if d.precision >= .float64, Precision.float32.holdsExactly(d.values) { exact32 += 1 }
        }
        if looked > 0, exactB == looked { return half(.bfloat16, "its products (student.F, ...) hold exact bfloat16 values") }
        if looked > 0, exactH + exactB == looked { return half(.float16, "its products (student.F, ...) hold exact fp16 values") }
        let low = precisions.min() ?? .float64
        if low <= .float32 { return ModeEvidence(mode: .float32, source: "float32 results") }
        if looked > 0, exact32 == looked { return ModeEvidence(mode: .float32, source: "its float64 products hold float32 values only: a float32 run stored as float64") }
        return ModeEvidence(mode: .float64, source: "float64 results")
    }

    /// The half type a pure-half run keeps everything in, when the file's non-product tensors
    /// hold exact values of it: the updated parameters, and the gradients no matmul makes
    /// (cls_token, a bias; autocast computes them in float32), else the parameters. nil:
    /// none shows it, or one contradicts it.
    static func paramsHold(_ file: ExchangeFile) throws -> Precision? {
        let key = file.config.studentParameters.first { !$0.frozen && $0.count >= 16 }?.key ?? "cls_token"
        var held: Precision? = nil, looked = 0
        for p in ["after_step/params/" + key, "grads/cls_token", "grads/t_embedder.mlp.0.bias", "params/" + key] {
            guard let d = try file.dataset(p), d.values.count >= 16 else { continue }
            let h: Precision? = d.precision < .float32 ? d.precision
                : Precision.bfloat16.holdsExactly(d.values) ? .bfloat16 : Precision.float16.holdsExactly(d.values) ? .float16 : nil
            guard let h, held == nil || held == h else { return nil }
            held = h; looked += 1
            if looked == 3 { break }
        }
        return held
    }
}

extension Backend {
    /// The precision mode this backend runs (nil: the reference).
    public var mode: PrecisionMode? {
        switch self {
        case .ref, .ref80: return nil
        case .fast: return .float32
        case .fastTF32: return .tf32
        case .fastTF32Conv: return .tf32Conv
        case .fastFP16: return .fp16Autocast
        case .fastBF16: return .bf16Autocast
        case .fastFP16Pure: return .fp16Pure
        case .fastBF16Pure: return .bf16Pure
        }
    }
}

extension PrecisionMode {
    /// The fast backend that runs this mode (nil: float64, the reference's).
    public var backend: Backend? { Backend.allCases.first { $0.mode == self } }
}

/// One calibrated tensor of the file: its error against the truth, and the level of a
/// correct run in the file's mode (for the detection floors and the diagnosis).
struct ProfileEntry {
    var name: String
    var error: Double
    var level: Double
    var limit: Double
    var failed: Bool
}

extension Calibration {
    /// Which precision the file's errors look like, from its whole error profile up to the
    /// first tensor that fails calibration (`first`): each other mode the fast path has is
    /// run on the setup; a mode fits when, up to and at `first`, no tensor's error exceeds
    /// its limit in that mode, and no product that mode would round coarsely (its level above
    /// 2^-16) agrees far better than it (1/16 of its level): such agreement upstream rules
    /// the mode out. Stored values rule out the modes that store (or do not store) products
    /// in a half type. A mode is suggested only when it fits; what still fails under it is
    /// named, so the suggestion never hides a difference.
    static func diagnose(profile: [ProfileEntry], firstFailure first: String, current: PrecisionMode,
                         seenHalf: Precision?, calibrationRun: CalibrationRun,
                         setup: RunSetup, memory: Double?) throws -> [String] {
        guard let fi = profile.firstIndex(where: { $0.name == first }) else { return [] }
        let upTo = profile[...fi], f = profile[fi]
        var candidates = PrecisionMode.allCases.filter { $0 != current && $0 != .float64 }
        var ruledOut: [String] = []
        // stored values: products in a half type, or not (`ModeEvidence.seenHalf`)
        if let h = seenHalf {
            candidates = candidates.filter { $0.storesHalf == h }
        } else {
            let removed = candidates.filter { $0.storesHalf != nil }
            if !removed.isEmpty { ruledOut.append("fp16 / bf16 (its products are not stored as half values)") }
            candidates = candidates.filter { $0.storesHalf == nil }
        }
        struct Fit { var mode: PrecisionMode; var ratioAtFirst: Double; var stillFails: [(String, Double)]; var tooPrecise: Int; var spread: Double }
        var fits: [Fit] = []
        // Each candidate's run streams; only the level of each profiled tensor is kept. Where
        // the calibration run did not fit in memory (XL/2), a candidate stops at `first`.
        let stopEarly = calibrationRun.spilled
        let profiled = Dictionary(uniqueKeysWithValues: profile.map { ($0.name, $0.level) })
        struct Enough: Error {}
        for m in candidates {
            guard let be = m.backend else { continue }
            let lim = CalibrationLimits.limit(m, path: first)
            var levels: [String: Double] = [:]
            do {
                try be.stream(setup, memory: memory) { p, d in
                    // that mode's level: its run against this mode's run (whose own error is far smaller)
                    guard let own = profiled[p] else { return }
                    if let y = try calibrationRun.tensor(p), let n = normwise(d.values, y.values) { levels[p] = max(n, own) }
                    if stopEarly, p == first { throw Enough() }
                }
            } catch is Enough {
            } catch let e as ExchangeError {
                ruledOut.append("\(m.rawValue) not tried (\(e))"); continue
            }
            /// a product that mode rounds coarsely (level above 2^-16) agreeing far better (1/16) than it
            func tooPrecise(_ e: ProfileEntry, _ l: Double) -> Bool {
                l >= CalibrationLimits.coarseLevel && e.error / l < 1.0 / CalibrationLimits.tooPreciseFactor
            }
            var why: String? = nil
            for e in upTo {
                guard let l = levels[e.name] else { continue }
                let r = e.error / l
                if r > CalibrationLimits.limit(m, path: e.name) {
                    why = String(format: "%@: %@ is x%.3g its level", m.rawValue, e.name, r); break
                }
                if tooPrecise(e, l) {
                    why = String(format: "%@: %@ agrees at %.2e, x%.2g the error of a %@ run (%.2e)", m.rawValue, e.name, e.error, r, m.rawValue, l)
                    break
                }
            }
            if let why { ruledOut.append(why); continue }
            guard let lf = levels[first], f.error / lf <= lim else { continue }
            var still: [(String, Double)] = []
            for e in profile[(fi + 1)...] {
                if let l = levels[e.name], e.error / l > CalibrationLimits.limit(m, path: e.name) { still.append((e.name, e.error / l)) }
            }
            let precise = profile.filter { e in levels[e.name].map { tooPrecise(e, $0) } ?? false }.count
            let logs = profile.compactMap { e in levels[e.name].map { abs(log2(max(e.error, 1e-300) / $0)) } }
            fits.append(Fit(mode: m, ratioAtFirst: f.error / lf, stillFails: still, tooPrecise: precise,
                            spread: logs.reduce(0, +) / Double(max(logs.count, 1))))
        }
        // the mode that explains the most: fewest tensors still failing, fewest far more precise, closest levels
        if let best = fits.min(by: { ($0.stillFails.count, $0.tooPrecise, $0.spread) < ($1.stillFails.count, $1.tooPrecise, $1.spread) }) {
            var s = String(format: "diagnosis: from %@ on, errors are those of %@ (x%.3g its level here; upstream consistent with it); compare with --b %@, or declare precision_mode \"%@\" in the file",
                           first, best.mode.phrase, best.ratioAtFirst, best.mode.backend!.rawValue, best.mode.rawValue)
            if let (n, r) = best.stillFails.first {
                s += String(format: "; even so, %@ fails under %@ (x%.3g its level): a bug there", n, best.mode.rawValue, r)
            }
            return [s]
        }
        var s = String(format: "diagnosis: from %@ on, errors are x%.3g those of a correct %@ run and match no other precision mode: a bug at %@?",
                       first, f.error / f.level, current.rawValue, first)
        if !ruledOut.isEmpty { s += " (ruled out: " + ruledOut.joined(separator: "; ") + ")" }
        return [s]
    }

    /// Per group, the smallest change a pass could not have seen: a correct run in `mode`
    /// reaches `limit` times its level, so a change below that passes.
    static func floors(_ comparisons: [Comparison], mode: PrecisionMode, againstMode: Bool) -> [String] {
        var order: [String] = [], groups: [String: [(String, Double)]] = [:]
        for c in comparisons {
            guard let cal = c.calibration else { continue }
            let g = c.name.split(separator: "/").first.map(String.init) ?? ""
            if groups[g] == nil { order.append(g) }
            groups[g, default: []].append((String(c.name.dropFirst(g.count + 1)), cal.limit * cal.level))
        }
        guard !order.isEmpty else { return [] }
        let out = floorLines(order, groups)
        let what = againstMode ? "a pass against fast-\(mode.backend.map { String($0.rawValue.dropFirst(5)) } ?? mode.rawValue)" : "a pass judged as \(mode.rawValue)"
        return ["detection floor: \(what) cannot see a change smaller than its limit times a correct \(mode.rawValue) run's error; for subtle numeric bugs dump a float32 step and compare it with --b ref"] + out
    }

    /// One line per group (in `order`): the smallest and largest floor among its tensors.
    static func floorLines(_ order: [String], _ groups: [String: [(String, Double)]]) -> [String] {
        order.compactMap { g in
            guard let v = groups[g], let lo = v.min(by: { $0.1 < $1.1 }), let hi = v.max(by: { $0.1 < $1.1 }) else { return nil }
            return String(format: "  floor %@: a pass cannot see changes below %@ (%@) to %@ (%@) of a tensor's largest value",
                          g.padding(toLength: 12, withPad: " ", startingAt: 0), pct(lo.1), lo.0, pct(hi.1), hi.0)
        }
    }

    /// The same for comparisons judged by a rule looser than float32's alone (two backends in
    /// a reduced mode, --rtol): the rule's own floor, atol / max|e| + rtol of the tensor's
    /// largest value.
    static func ruleFloors(_ comparisons: [Comparison]) -> [String] {
        let f32 = Tolerances.rule(for: "activations/x", .float32, .float64, lr: 1)
        let loose = comparisons.filter { c in
            c.calibration == nil && c.unitOfAbs == nil && !c.shapeMismatch && c.scale > 0
                && c.tolerance.rtol + c.tolerance.atolScale > f32.rtol + f32.atolScale
        }
        guard !loose.isEmpty else { return [] }
        var order: [String] = [], groups: [String: [(String, Double)]] = [:]
        for c in loose {
            let g = c.name.split(separator: "/").first.map(String.init) ?? ""
            if groups[g] == nil { order.append(g) }
            groups[g, default: []].append((String(c.name.dropFirst(g.count + 1)), c.effectiveAtol / c.scale + c.tolerance.rtol))
        }
        return ["detection floor: \(loose.count) tensors were judged by a rule looser than float32's alone (\(loose[0].tolerance.description)); a pass cannot see changes below these; for subtle numeric bugs compare a float32 step"]
            + floorLines(order, groups)
    }

    static func pct(_ x: Double) -> String { String(format: "%.2g%%", 100 * x) }
}
