import RealModule

/// The schedules of SPEC §5 as functions of (step, total steps, warm-up steps).
public enum Schedules {
    /// DINO's cosine_scheduler: beta = final + (base - final)(1 + cos(pi step/total))/2, 0.996 -> 0.999.
    public static func emaBeta(step: Int, totalSteps: Int, base: Double = 0.996, final: Double = 0.999) -> Double {
        guard totalSteps > 0 else { return base }
        let s = Double(min(max(step, 0), totalSteps))
        return final + (base - final) * (1 + Double.cos(Double.pi * s / Double(totalSteps))) / 2
    }
    /// DINO's teacher-temperature warm-up: linspace(0.09, 0.099, warmup), then 0.099.
    public static func tauT(step: Int, warmupSteps: Int, start: Double = 0.09, end: Double = 0.099) -> Double {
        if step >= warmupSteps { return end }
        if warmupSteps <= 1 { return start }
        return start + (end - start) * Double(max(step, 0)) / Double(warmupSteps - 1)
    }
}
