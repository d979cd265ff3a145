// Comparison tolerances, keyed by the pair of precisions and the kind of tensor, and the
// limits of calibrated verdicts per precision mode (`CalibrationLimits`). Each value states
// its reason; the errors measured against them are in README "Tolerances" and DECISIONS 26 / 42
// (one home each).
public enum Tolerances {
    /// The rule for dataset `path` when a side in precision `a` meets one in `b`.
    /// `lr` is the learning rate of the step (after-step parameters are judged in units of lr).
    public static func rule(for path: String, _ a: Precision, _ b: Precision, lr: Double) -> Tolerance {
        let low = min(a, b)
        let afterParams = path.hasPrefix("after_step/params/") || path.hasPrefix("after_step/teacher/")
        switch low {
        case .float64, .float80, .integer:
            // Two float64 computations of the same math in a different order: rounding errors
            // of O(depth * eps * condition), measured on the five PyTorch fixtures (README
            // "Tolerances"). 1e-9 is the fixture contract of SPEC / the issue: orders of
            // magnitude of margin, still far below any real bug. The scale term
            // (1e-9 * max|e| of the tensor) judges entries that are exact zeros in exact
            // arithmetic, such as the key third of d attn.qkv.bias (SPEC hazard 1), against
            // the scale of their tensor instead of element-wise.
            var t = Tolerance(rtol: 1e-9, atolScale: 1e-9,
                              reason: "float64 vs float64: reordered rounding, fixture contract 1e-9")
            if afterParams {
                // SPEC hazard 2: AdamW's first step moves an entry whose gradient is rounding
                // noise by ~lr g/eps. Measured against the fixtures: max |a - e| 5e-11 at lr 1e-2
                // (5e-9 lr, in the key third of attn.qkv.bias). Judge in units of lr: atol 1e-7 lr.
                t.atolAbs = 1e-7 * lr
                t.reason += "; after-step parameters also within 1e-7 lr (AdamW amplifies noise gradients by 1/eps)"
            }
            return t
        case .float32:
            // float32 (u = 6e-8) against float64: long reductions and the 1/tau = 10 sharpening
            // of the DINO softmax (measured norm-wise on the fixtures: README "Tolerances").
            // rtol 1e-4 / atol 1e-5 + 1e-4 max|e| (STYLE's starting point) leaves >= 20x margin.
            var t = Tolerance(rtol: 1e-4, atolAbs: 1e-5, atolScale: 1e-4,
                              reason: "float32 vs float64: unit roundoff 6e-8 times depth and conditioning")
            if afterParams {
                // SPEC hazard 2: where a gradient is float32 rounding noise, Adam's first step
                // moves the entry by up to lr (|m/(sqrt(v) + eps)| < 1) in either direction; a
                // float64 side moves it by ~0. Judged within lr against float64, within 2 lr
                // when both sides are float32 (the two moves may have opposite signs).
                let bothLow = max(a, b) <= .float32
                t.atolAbs = bothLow ? 2 * lr : lr
                t.reason += bothLow ? "; after-step parameters within 2 lr (noise gradients, both sides float32)"
                    : "; after-step parameters within lr (noise gradients)"
            }
            return t
        case .float16, .bfloat16, .tfloat32:
            // Half-precision matmul operands / storage: tolerances in units of the half type's
            // unit roundoff u (fp16 4.9e-4, bf16 3.9e-3): rtol 20u, atol 20u + 40u max|e|
            // (measured norm-wise on the fixtures and golden dumps: README "Tolerances").
            // TF32 (operands only, u = 2^-11 as fp16): the same rule.
            let u = low.unitRoundoff
            var t = Tolerance(rtol: 20 * u, atolAbs: 20 * u, atolScale: 40 * u,
                              reason: "half-precision operands: 20u / 20u + 40u max|e|, u the half type's unit roundoff")
            if afterParams { t.atolAbs = 2 * lr; t.reason += "; after-step parameters within 2 lr" }
            return t
        }
    }
}

/// The limits of calibrated verdicts (docs/DECISIONS.md 26, 42; `Calibration` in SDDiTDiff
/// applies them). A file's tensor passes when its norm-wise error against the float64 truth,
/// max|a - e| / max|e|, is at most `limit` times the level: the same error of the fast path in
/// the file's precision mode on the file's own setup, so the limits are ratios, independent of
/// the problem size by construction (measured on the tiny config). `Tolerances.rule` stays the
/// ceiling. Worst ratios of correct runs were measured on implementations independent of the
/// fast path, over seeds (README "Tolerances" repeats them).
public enum CalibrationLimits {
    /// float32 (and tf32-conv) file vs float64: independent float32 runs reach x3.6 (the reference's code in Float, 516 tensors) and x4.0 (PyTorch steps).
    public static let float32 = 16.0
    /// Sampler states, any mode (measured in float32; reduced-mode corpora have no sampler): a correct float32 sampler that keeps x in float32 (EDM and the fast path keep it in float64) reaches x30 over 5 Heun steps.
    public static let sampler = 128.0
    /// tf32 file (10-bit-mantissa operands, float32 storage) vs float64: independent PyTorch TF32 steps reach x2.9 (a loss), x1.7 a gradient (6 seeds, 189 tensors each).
    public static let tf32 = 8.0
    /// fp16 / bf16 file, autocast or pure, vs float64: independent PyTorch steps (6 seeds each) reach x2.4 activations, x1.8 centers, x3.3 losses (with `scalarFloor`).
    public static let half = 8.0
    /// Their gradients (long backward reductions over half-type products): worst x6.0, 99th percentile x5.0 of 378 per mode.
    public static let halfGradients = 16.0
    /// Against the mode's own backend (`--b fast-bf16`) rather than the truth: one level more, |file - run| <= |file - truth| + |run - truth|.
    public static let againstModeExtra = 1.0
    /// Every level's floor, in float32 unit roundoffs (2^-24): a tensor the fast path gets almost exact must not make any rounding of the file look like a bug.
    public static let floorUnits = 4.0
    /// A half-typed dataset's floor, in units of its storage type: storing alone rounds each element by up to one unit, so a level below that would count storage as error.
    public static let storageFloorUnits = 2.0

    /// The multiple of the mode's level a correct file may reach at dataset `path`.
    public static func limit(_ m: PrecisionMode, path: String) -> Double {
        if path.hasPrefix("sampler/") { return sampler }
        switch m {
        case .float64, .float32, .tf32Conv: return float32
        case .tf32: return tf32
        case .fp16Autocast, .fp16Pure, .bf16Autocast, .bf16Pure: return path.hasPrefix("grads/") ? halfGradients : half
        }
    }

    /// A scalar's (a loss's) floor in a reduced mode, one unit roundoff of the mode's type: one loss is one sample of a correct run's error, not its level (correct bf16 losses reach 55x one run's error, x3.3 this floor).
    public static func scalarFloor(_ m: PrecisionMode) -> Double {
        m == .float64 || m == .float32 || m == .tf32Conv ? 0 : m.label.unitRoundoff
    }

    /// A mode's level above 2^-16 (256 float32 units): a product that mode rounds coarsely, whose close agreement can rule the mode out (the diagnosis, the "not a tf32 run" note).
    public static let coarseLevel = 0x1p-16
    /// Agreeing this many times better than a correct run of a mode on such a product: not a run in that mode (a float32 file's student.tokens against TF32's or bf16's level).
    public static let tooPreciseFactor = 16.0
}
