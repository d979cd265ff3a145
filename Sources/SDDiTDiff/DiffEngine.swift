import Foundation
import SDDiTCore
import SDDiTExchange

// `oracle diff`: two runs side by side, tensor by tensor. The sides and how their results are
// obtained: DiffSide.swift; the comparison of each tensor: DiffJudge.swift; the report:
// DiffReport.swift; calibrated verdicts: Calibration.swift, their limits in SDDiTCore's
// Tolerances.swift (`CalibrationLimits`).

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

public enum DiffEngine {
    /// Compares side a with side b: every dataset both have, in dataset order.
    public static func run(a: Side, b: Side, options o: DiffOptions) throws -> DiffReport {
        let inputs = try DiffInputs(a: a, b: b, options: o)            // files read, the setup both run
        let judging = try Judging(inputs, options: o)                  // which file is judged, in which mode
        let sides = try DiffSides(inputs, judging: judging)            // the calibration run, each side's results, who streams
        let judge = try TensorJudge(inputs, judging, sides)
        try sides.compareAll { p, x, y, truth in try judge.compare(p, x, y, truth: truth) }
        return try DiffReport(inputs, judging, sides, judge)
    }

    /// "after_step/params/x" -> "after_step", "grads/x" -> "grads"
    static func groupOf(_ p: String) -> String { String(p.split(separator: "/").first ?? "") }
}
