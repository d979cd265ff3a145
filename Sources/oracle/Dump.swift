import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast
import SDDiTReference

struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one training step (and the sampler) and write everything in the SPEC §7 layout.",
        discussion: """
        Writes config, /params, /teacher, /inputs, /activations, /losses, /grads, /after_step and, with --sample STEPS, /sampler: the file another framework compares against. The setup comes from --config/--seed (random non-zero parameters, a teacher that differs from the student, random inputs) or from an existing file (--from). The write is atomic: a temporary file renamed into place.

        Examples:
          oracle dump --backend ref --config tiny --seed 1 --mask-ratio 0.5 \\
              --out tiny.h5
          oracle dump --backend ref --from fixtures/public_train_tiny.h5 --out again.h5

        Planted bugs (a debugging aid, for files that must fail): with a fast backend, the environment variable SDDIT_ORACLE_VARIANT=layernorm-eps:BLOCK:EPS uses LayerNorm eps EPS in encoder block BLOCK, and SDDIT_ORACLE_VARIANT=exact-gelu:BLOCK the exact (erf) GELU there (FastVariant); the file's generator says so.
        """)

    @Option(help: "Backend that computes the results: \(Backend.allCases.map(\.rawValue).joined(separator: ", ")).") var backend: String = "ref"
    @Option(help: "Output HDF5 file.") var out: String
    @Option(help: "Take config, parameters and inputs from this exchange file instead of a seed.")
    var from: String?
    @OptionGroup var setup: SetupOptions
    @Option(help: "Parameter init for seeded setups: random (every tensor non-zero) or dit (adaLN-Zero).")
    var initMode: String = "random"

    func validate() throws {
        if from == nil, let be = Backend(rawValue: backend) { try setup.checkStepMemory([be]) }   // --from: checked once read
        try requireWritableOutput(out, option: "--out")
    }

    func run() throws {
        guard let be = Backend(rawValue: backend) else {
            throw ValidationError("unknown backend '\(backend)'; expected one of: \(Backend.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let mode = Initialization.Mode(rawValue: initMode) else {
            throw ValidationError("unknown --init-mode '\(initMode)'; expected random or dit")
        }
        try reportingErrors {
            var cfg = try setup.modelConfig()
            let s: RunSetup
            if let from {
                let f = try ExchangeFile.read(from)
                cfg = f.config
                s = try f.runSetup()
            } else {
                if let r = setup.maskRatio { cfg.maskRatio = r }
                cfg.cfgScale = setup.cfgScale
                s = SeededSetup.make(cfg, seed: setup.seed, batch: setup.batch, maskRatio: cfg.maskRatio,
                                     sampleSteps: setup.sample, cfgScale: setup.cfgScale, init: mode)
            }
            // Written as computed: the setup first, then each result as the backend hands it over.
            let variant = try plantedVariant(be)
            var extra: [String: Any] = ["generator": "sddit-oracle \(be.rawValue)" + (variant.map { " planted \($0.spec)" } ?? ""), "seed": setup.seed]
            if let sm = s.sampler { extra["num_steps"] = sm.steps }
            if let I = s.inputs { extra["batch_size"] = I.labels.count }
            try be.checkFits(s)
            let w = try ExchangeWriter.Stream(out, config: cfg, configExtra: extra)
            let (floats, ints) = setupDatasets(s)
            try w.write(datasets: floats, integers: ints, config: cfg)
            var count = floats.count + ints.count
            try withReferenceProgress {
                func emit(_ p: String, _ d: NamedTensor) throws {
                    guard !(p == "params/pos_embed" || p == "params/decoder_pos_embed") else { return }   // the setup's are written
                    try w.write(p, d)
                    count += 1
                }
                if let v = variant, let prec = be.fastPrecision {
                    try FastBackend.stream(s.fastSetup, precision: prec, variant: v.variant, emit: emit)
                } else {
                    try be.stream(s, emit: emit)
                }
            }
            try w.finish(cfgScale: s.sampler?.cfgScale)
            print("wrote \(out): \(count) datasets (\(be.rawValue), config \(cfg.name))")
        }
    }
}

/// SDDIT_ORACLE_VARIANT (see `oracle dump --help`): a planted deviation for a fast backend.
func plantedVariant(_ be: Backend) throws -> (spec: String, variant: FastVariant)? {
    guard let spec = ProcessInfo.processInfo.environment["SDDIT_ORACLE_VARIANT"], !spec.isEmpty else { return nil }
    guard be.fastPrecision != nil else { throw ValidationError("SDDIT_ORACLE_VARIANT=\(spec): planted variants need a fast backend, not \(be.rawValue)") }
    let f = spec.split(separator: ":").map(String.init)
    if f.count == 3, f[0] == "layernorm-eps", let b = Int(f[1]), b >= 0, let e = Float(f[2]), e > 0 {
        return (spec, FastVariant(layerNormEpsBlock: b, layerNormEps: e))
    }
    if f.count == 2, f[0] == "exact-gelu", let b = Int(f[1]), b >= 0 { return (spec, FastVariant(exactGELUBlock: b)) }
    throw ValidationError("SDDIT_ORACLE_VARIANT=\(spec): expected layernorm-eps:BLOCK:EPS or exact-gelu:BLOCK")
}
