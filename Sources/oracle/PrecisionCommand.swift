import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast

struct PrecisionCmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "precision",
        abstract: "Find where mixed precision runs out of range, and reproduce NaN/Inf failures.",
        discussion: """
        Without --scenario: a headroom sweep. One training step per sigma (every sample at that
        sigma, log-spaced over [sigma_min, sigma_max]) and the sampler's steps run with every
        named tensor watched (forward activations by SPEC name, backward gradients as "d NAME",
        scaled by the loss scale as a GradScaler run stores them). For each it reports max|x|,
        the bits left before the half type overflows (log2(65504 / max|x|) for fp16), and the
        fraction of non-zero values below the half type's smallest normal number (underflow).
        It ends with the tensors that run out of range first and at which sigma.

        With --scenario: one training step of a named reproduction with the anomaly monitor on.
        When a value goes non-finite it prints a line beginning `first non-finite:` with the
        tensor, operation, index and input magnitudes, then why, and exits 1.

        Examples:
          oracle precision --list-scenarios
          oracle precision --scenario edm-grad-overflow --mode fast-fp16    # fires
          oracle precision --scenario edm-grad-overflow --mode fast-bf16    # silent
          oracle precision --config tiny --points 9 --half fp16
        """)

    @Flag(name: .customLong("list-scenarios"), help: "List the scenarios, one a line, name first.")
    var listScenarios = false
    @Option(help: "Run this scenario.") var scenario: String?
    @Option(help: "fast, fast-fp16, fast-bf16, fast-fp16-pure or fast-bf16-pure (scenario default: the mode it is for; sweep default: fast).")
    var mode: String?
    @OptionGroup var setup: SetupOptions
    @Option(help: "Sweep: number of sigma values.") var points: Int = 7
    @Option(help: "Sweep: the half type headroom is measured against (fp16 or bf16).") var half: String = "fp16"
    @Option(name: .customLong("loss-scale"), help: "Loss scale of the backward pass (GradScaler's initial 65536; scenarios in fp16 modes start their GradScaler there).")
    var lossScale: Float?
    @Option(help: "Sweep: tensors listed per sigma.") var top: Int = 4

    static func mode(_ s: String) throws -> FastPrecision {
        guard let b = Backend(rawValue: s), let p = b.fastPrecision else {
            throw ValidationError("unknown mode '\(s)'; expected fast, fast-fp16, fast-bf16, fast-fp16-pure or fast-bf16-pure")
        }
        return p
    }

    func run() throws {
        if listScenarios {
            for s in PrecisionScenario.all { print("\(s.name)  \(s.summary)") }
            print("\(CollapseScenario.name)  \(CollapseScenario.summary)")
            return
        }
        if scenario == CollapseScenario.name {
            let p = try mode.map(Self.mode) ?? .pureFP16
            let t = try reportingErrors { try CollapseScenario.run(mode: p) }
            print("scenario \(CollapseScenario.name), mode \(Backend.allCases.first { $0.fastPrecision == p }!.rawValue): \(CollapseScenario.summary)")
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
            let p = try mode.map(Self.mode) ?? sc.defaultMode
            let o = try reportingErrors { try sc.run(mode: p, lossScale: lossScale) }
            print("scenario \(sc.name), mode \(Backend.allCases.first { $0.fastPrecision == p }!.rawValue): \(sc.summary)")
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
        let p = try Self.mode(mode ?? "fast")
        let halfMax: Float = half == "bf16" ? Float.greatestFiniteMagnitude : 65504
        let minNormal: Float = half == "bf16" ? Float.leastNormalMagnitude : 6.103515625e-05
        guard half == "fp16" || half == "bf16" else { throw ValidationError("--half must be fp16 or bf16") }
        guard points >= 2 else { throw ValidationError("--points must be at least 2") }
        try reportingErrors {
            var cfg = try setup.modelConfig()
            if let r = setup.maskRatio { cfg.maskRatio = r }
            let s = SeededSetup.make(cfg, seed: setup.seed, batch: setup.batch, maskRatio: cfg.maskRatio, sampleSteps: nil)
            let lo = log(cfg.sigmaMin), hi = log(cfg.sigmaMax)
            let sigmas = (0..<points).map { exp(lo + (hi - lo) * Double($0) / Double(points - 1)) }
            let rows = try HeadroomSweep.run(s, mode: p, sigmas: sigmas, lossScale: lossScale ?? 65536, samplerSteps: setup.sample)
            print("headroom against \(half) (max \(halfMax), smallest normal \(minNormal)); config \(cfg.name), batch \(setup.batch), mode \(mode ?? "fast"), backward scaled by \(lossScale ?? 65536)")
            var firstOut: [(Double, String, String, Float)] = []
            for r in rows {
                let ents = r.entries.map { e -> (HeadroomEntry, Double, Double) in
                    var e2 = e
                    e2.belowNormal = e.belowNormal   // recorded against the model's own half type
                    return (e2, e.headroomBits(halfMax), e.underflowFraction)
                }
                let tight = ents.sorted { $0.1 < $1.1 }.prefix(top)
                let under = ents.max { $0.2 < $1.2 }
                print(String(format: "%@ sigma %-10.4g ", r.phase, r.sigma) + tight.map { String(format: "%@ %.1f bits (max %.3g)", $0.0.name, $0.1, $0.0.maxAbs) }.joined(separator: "; "))
                if let u = under, u.2 > 0 {
                    print(String(format: "                     most underflow: %@ %.1f%% of non-zeros below the smallest normal", u.0.name, 100 * u.2))
                }
                for e in ents where e.1 < 0 || e.0.nonFinite > 0 { firstOut.append((r.sigma, r.phase, e.0.name, e.0.maxAbs)) }
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
        }
    }
}
