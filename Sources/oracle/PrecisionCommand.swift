import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTTraining
import SDDiTFast

struct PrecisionCmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "precision",
        abstract: "Find where mixed precision runs out of range, and reproduce NaN/Inf failures.",
        discussion: """
        Without --scenario: a headroom sweep. One training step per sigma (every sample at that sigma, log-spaced over [sigma_min, sigma_max]) and the sampler's steps run with every named tensor watched (forward activations by SPEC name, backward gradients as "d NAME", scaled by the loss scale as a GradScaler run stores them). For each it reports max|x|, the bits left before the half type overflows (log2(\(Int(FastPrecision.fp16.halfMax)) / max|x|) for fp16), and the fraction of non-zero values below the half type's smallest normal number (underflow). It ends with the tensors that run out of range first and at which sigma.

        Each gradient (the backward's "d NAME" and each parameter's "grad KEY") also gets the loss scale at which GradScaler's quiet failure begins for it: the largest power of two at which more than half of its non-zero elements fall below the half type's smallest normal number and flush (exact from a float32 sweep, --mode fast, the default). A collapsing GradScaler that falls below it stops training that tensor with a finite loss; `oracle train` warns when it happens.

        The sweep holds one forward-and-backward-only model (float32 student, teacher and gradients, no optimizer state): XL/2 at batch 1 fits in about 10 GB.

        With --scenario: a named reproduction. The NaN/Inf scenarios run one training step with the anomaly monitor on; when a value goes non-finite it prints a line beginning `first non-finite:` with the tensor, operation, index and input magnitudes, then why, and exits 1. gradscaler-collapse trains 60 steps with the quiet-failure monitor and exits 1 with its warning.

        Examples:
          oracle precision --list-scenarios
          oracle precision --scenario dino-grad-overflow --mode fast-fp16   # fires
          oracle precision --scenario dino-grad-overflow --mode fast-bf16   # silent
          oracle precision --scenario gradscaler-collapse                   # warns
          oracle precision --config XL/2 --batch 1
          oracle precision --config tiny --points 9 --half fp16
        """)

    @Flag(name: .customLong("list-scenarios"), help: "List the scenarios, one a line, name first.")
    var listScenarios = false
    @Option(help: "Run this scenario.") var scenario: String?
    @Option(help: "The fast path's precision (scenario default: the mode it is for; sweep default: \(FastPrecision.fp32.argumentName)).")
    var mode: FastPrecision?
    @OptionGroup var setup: SetupOptions
    @Option(help: "Sweep: number of sigma values.") var points: Int = 7
    @Option(help: "Sweep: the half type headroom is measured against.") var half: HalfType = .fp16
    @Option(name: .customLong("loss-scale"), help: "Loss scale of the backward pass (GradScaler's initial \(Int(LossScaler(enabled: true).scale)); scenarios in fp16 modes start their GradScaler there).")
    var lossScale: Float?
    @Option(help: "Sweep: tensors listed per sigma.") var top: Int = 4

    func validate() throws {
        if scenario == nil && !listScenarios {
            try setup.checkMemory(need: { $0.estimatedHeadroomSweepBytes(batch: max(setup.batch, 1)) },
                                  what: "the headroom sweep at batch \(setup.batch)")
        }
    }

    /// 2^k when `x` is a power of two, else %g.
    static func powerOfTwo(_ x: Double) -> String {
        x.significand == 1 ? "2^\(Int(x.exponent))" : String(format: "%g", x)
    }

    func run() throws {
        if listScenarios {
            for s in PrecisionScenario.all { print("\(s.name)  \(s.summary)") }
            print("\(CollapseScenario.name)  \(CollapseScenario.summary)")
            return
        }
        if scenario == CollapseScenario.name {
            let p = mode ?? .pureFP16
            let t = try reportingErrors { try CollapseScenario.run(mode: p) }
            print("scenario \(CollapseScenario.name), mode \(p.argumentName): \(CollapseScenario.summary)")
            let h = t.history, w = 10
            print("L_G \(t.windowMean(0, 0..<w)) -> \(t.windowMean(0, (h.count - w)..<h.count)) (finite steps among the first and last \(w)); "
                  + String(format: "skipped %d of %d steps; loss scale %g", h.filter { $0[4] != 0 }.count, h.count, Double(t.model.scaler.scale)))
            if let q = t.quiet.failure {
                print("warning: " + q.description)
                print("remedy: \(CollapseScenario.remedy)")
                throw ExitCode(1)
            }
            print("no quiet failure")
            return
        }
        if let name = scenario {
            guard let sc = PrecisionScenario.named(name) else {
                throw ValidationError("unknown scenario '\(name)'; see --list-scenarios")
            }
            let p = mode ?? sc.defaultMode
            let o = try reportingErrors { try sc.run(mode: p, lossScale: lossScale) }
            print("scenario \(sc.name), mode \(p.argumentName): \(sc.summary)")
            if let e = o.firstNonFinite {
                print(e.description)
                print("why: \(o.explanation ?? "")")
                print("loss scale at the failure: \(o.lossScale)")
                print("remedy: \(sc.remedy)")
                throw ExitCode(1)
            }
            let l = o.losses
            print(String(format: "no non-finite value: losses generative %.6g, dis_cls %.6g, dis_patch %.6g, total %.6g; gradients finite at loss scale %g",
                         l["generative"] ?? .nan, l["dis_cls"] ?? .nan, l["dis_patch"] ?? .nan, l["total"] ?? .nan, o.lossScale))
            return
        }
        let p = mode ?? .fp32
        let halfMax = half.precision.halfMax, minNormal = half.precision.halfMinNormal
        guard points >= 2 else { throw ValidationError("--points must be at least 2") }
        let scale = lossScale ?? LossScaler(enabled: true).scale
        guard scale > 0 && scale.isFinite else { throw ValidationError("--loss-scale must be positive and finite") }
        let started = ContinuousClock.now
        try reportingErrors {
            var cfg = try setup.modelConfig()
            if let r = setup.maskRatio { cfg.maskRatio = r }
            let lo = log(cfg.sigmaMin), hi = log(cfg.sigmaMax)
            let sigmas = (0..<points).map { exp(lo + (hi - lo) * Double($0) / Double(points - 1)) }
            let status = StatusLine()
            let rows = try HeadroomSweep.run(cfg, seed: setup.seed, batch: setup.batch, maskRatio: cfg.maskRatio, mode: p,
                                             sigmas: sigmas, lossScale: scale, samplerSteps: setup.sample,
                                             progress: { status.show("precision \(cfg.name): " + $0) })
            status.clear()
            print("headroom against \(half) (max \(halfMax), smallest normal \(minNormal)); config \(cfg.name), batch \(setup.batch), mode \(p.argumentName), backward scaled by \(scale)")
            var firstOut: [(Double, String, String, Float)] = []
            var quietest: (scale: Double, name: String, sigma: Double)?
            for r in rows {
                // the network's tensors; parameter gradients ("grad KEY") only enter the quiet-failure line
                let ents = r.entries.filter { !$0.name.hasPrefix("grad ") }.map { e -> (HeadroomEntry, Double, Double) in
                    (e, e.headroomBits(halfMax), e.underflowFraction)
                }
                let tight = ents.sorted { $0.1 < $1.1 }.prefix(top)
                let under = ents.max { $0.2 < $1.2 }
                print(String(format: "%@ sigma %-10.4g ", r.phase, r.sigma) + tight.map { String(format: "%@ %.1f bits (max %.3g)", $0.0.name, $0.1, $0.0.maxAbs) }.joined(separator: "; "))
                if let u = under, u.2 > 0 {
                    print(String(format: "                     most underflow: %@ %.1f%% of non-zeros below the smallest normal", u.0.name, 100 * u.2))
                }
                for e in ents where e.1 < 0 || e.0.nonFinite > 0 { firstOut.append((r.sigma, r.phase, e.0.name, e.0.maxAbs)) }
                if r.phase == "train" {
                    var q: (Double, String)?
                    for e in r.entries where e.name.hasPrefix("d ") || e.name.hasPrefix("grad ") {
                        guard let qs = e.quietScale(recorded: scale, minNormal: minNormal) else { continue }
                        if q == nil || qs > q!.0 { q = (qs, e.name) }
                    }
                    if let q {
                        print(String(format: "                     goes quiet first: %@ (over half its non-zero elements below the smallest normal at a loss scale of %@ or less)",
                                     q.1 + (q.1.hasPrefix("grad ") ? " (a parameter gradient: in the half type under pure half training)" : ""), Self.powerOfTwo(q.0)))
                        if quietest == nil || q.0 > quietest!.scale { quietest = (q.0, q.1, r.sigma) }
                    }
                }
            }
            if firstOut.isEmpty {
                print("no tensor exceeds \(half)'s range at any sigma of the sweep")
            } else {
                let bySigma = Dictionary(grouping: firstOut, by: { "\($0.1) \($0.0)" })
                print("out of \(half) range:")
                for (k, v) in bySigma.sorted(by: { $0.value[0].0 < $1.value[0].0 }) {
                    print("  \(k.split(separator: " ")[0]) sigma \(String(format: "%.4g", v[0].0)): " + v.map { String(format: "%@ (max %.3g)", $0.2, $0.3) }.joined(separator: ", "))
                }
            }
            if let q = quietest {
                let margin = log2(Double(scale) / q.scale)
                let head: String = String(format: "quiet failure (GradScaler collapse): at a loss scale of %@ or less, %@ loses over half of its non-zero gradient elements to %@ underflow (sigma %.4g); ",
                                          Self.powerOfTwo(q.scale), q.name, half.rawValue, q.sigma)
                let tail: String = margin > 0 ? String(format: "%.1f halvings below this sweep's scale %g", margin, Double(scale))
                                              : String(format: "already at this sweep's scale %g", Double(scale))
                print(head + tail)
            }
            print(String(format: "swept in %.2f s", (ContinuousClock.now - started).seconds))
        }
    }
}
