import Foundation
import SDDiTCore
import SDDiTExchange

// The report of a diff: every verdict in dataset order, what one side lacks, and for a file
// judged in a precision mode what its errors look like and what a pass could not see; its
// lines for people, its JSON for machines.

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
    /// The failure's cause as `--explain` found it (empty: not asked for, or a pass).
    public var explanations: [Explanation] = []
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
        out += explanations.map(\.line)
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
         "tensors": comparisons.map(\.json), "explanations": explanations.map(\.json)]
    }
}

extension DiffReport {
    /// The report of a diff whose datasets `judge` has judged: the verdicts in dataset order,
    /// the datasets one side lacks (a gradient of a fixed parameter among them fails), what
    /// was assumed, and for a file judged in a mode its diagnosis, notes and detection floors.
    init(_ inputs: DiffInputs, _ judging: Judging, _ sides: DiffSides, _ judge: TensorJudge) throws {
        let o = inputs.options, cfg = inputs.config
        self.init(labelA: inputs.a.description, labelB: inputs.b.description)
        allowMissing = o.allowMissing
        allowUncalibrated = o.allowUncalibrated
        if let e = judging.evidence {
            mode = e.mode.rawValue
            modeSource = e.source
            notes += e.notes
        }
        notes += inputs.defaultNotes
        notes += sides.notes
        uncalibrated = sides.uncalibrated
        notRecorded = sides.notRecorded

        // every path of both sides in dataset order; what only one side has
        order = DatasetOrder.sorted(Array(sides.a.compared.union(sides.b.compared)), cfg)
        let rank = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })
        comparisons = judge.comparisons.sorted { rank[$0.name]! < rank[$1.name]! }
        let frozen = Set(cfg.studentParameters.filter(\.frozen).map(\.key))
        for p in order {
            let inA = sides.a.compared.contains(p), inB = sides.b.compared.contains(p)
            if !inA { onlyInB.append(p) } else if !inB { onlyInA.append(p) }
            if !(inA && inB), p.hasPrefix("grads/"), frozen.contains(String(p.dropFirst(6))) { fixedTrained.append(p) }
        }
        for s in [sides.a, sides.b] where !s.narrowed.isEmpty {
            let n = s.narrowed.sorted { rank[$0] ?? 0 < rank[$1] ?? 0 }
            notes.append("note: \(n.count) float64 datasets of \(s === sides.a ? labelA : labelB) hold float32 values only (a float32 run stored as float64; first \(n[0])): judged as float32")
        }

        if let m = judging.mode {
            let profile = judge.profile.sorted { rank[$0.name]! < rank[$1.name]! }
            if let first = profile.first(where: \.failed), let run = sides.calibrationRun {
                diagnosis = try Calibration.diagnose(profile: profile, firstFailure: first.name, current: m, seenHalf: judging.evidence?.seenHalf,
                                                     calibrationRun: run, setup: try inputs.setup(), memory: o.memory)
            }
            // a run more precise than the mode it is judged in: the verdict is blind to what
            // the file's own precision resolves
            if m != .float32, let e = profile.first(where: { $0.level >= CalibrationLimits.coarseLevel && $0.error < $0.level / CalibrationLimits.tooPreciseFactor }) {
                notes.append(String(format: "note: errors at %@ are %.2e, x%.2g those of a correct %@ run: this is not a %@ run; a pass here cannot see what its own precision would show (compare it as float32: --b ref, precision_mode \"float32\")",
                                    e.name, e.error, e.error / e.level, m.rawValue, m.rawValue))
            }
            if m != .float32 { floors = Calibration.floors(comparisons, mode: m, againstMode: judging.againstMode) }
        }
        if floors.isEmpty { floors = Calibration.ruleFloors(comparisons) }
    }
}
