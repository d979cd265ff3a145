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

        Planted bugs (a debugging aid, for files that must fail): with a fast backend, --plant BUG (or the environment variable SDDIT_ORACLE_VARIANT=BUG) runs the fast path with one deliberate deviation (FastVariant): gelu-exact:BLOCK (exact erf GELU in encoder block BLOCK), ln-eps:BLOCK[:EPS] (LayerNorm eps EPS, default 1e-5, there), no-sqrt-d:BLOCK (attention logits without 1/sqrt(head_dim)), shift-scale:BLOCK (modulate's shift and scale swapped), tau-swap (the DINO temperatures swapped), tf32-conv (the patch embedding in TF32); the file's config says so (planted_bug).
        """)

    @Option(help: "Backend that computes the results.") var backend: Backend = .ref
    @Option(help: "Output HDF5 file.") var out: String
    @Option(help: "Take config, parameters and inputs from this exchange file instead of a seed.")
    var from: String?
    @OptionGroup var setup: SetupOptions
    @Option(help: "Parameter init for seeded setups: random (every tensor non-zero) or dit (adaLN-Zero).")
    var initMode: Initialization.Mode = .random

    @Option(help: "A planted bug in the fast path, for files that must fail (see above).")
    var plant: String?

    func validate() throws {
        if from == nil { try setup.checkStepMemory([backend]) }   // --from: checked once read
        try requireWritableOutput(out, option: "--out")
    }

    func run() throws {
        let be = backend
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
                                     sampleSteps: setup.sample, cfgScale: setup.cfgScale, init: initMode)
            }
            // Written as computed: the setup first, then each result as the backend hands it over.
            let bug = plant ?? ProcessInfo.processInfo.environment["SDDIT_ORACLE_VARIANT"].flatMap { $0.isEmpty ? nil : $0 }
            if let bug, be.fastPrecision == nil { throw ValidationError("planted bug \(bug): planted bugs need a fast backend, not \(be.rawValue)") }
            let variant = try bug.map { b in
                do { return try FastVariant(planted: b) } catch { throw ValidationError("\(error)") }
            }
            var extra: [String: Any] = ["generator": "sddit-oracle \(be.rawValue)" + (bug.map { " planted \($0)" } ?? ""), "seed": setup.seed]
            if let sm = s.sampler { extra["num_steps"] = sm.steps }
            if let I = s.inputs { extra["batch_size"] = I.labels.count }
            try be.checkFits(s)
            if let bug { extra["planted_bug"] = bug }
            let w = try ExchangeWriter.Stream(out, config: cfg, configExtra: extra, precisionMode: be.mode ?? .float64)
            let (floats, ints) = setupDatasets(s)
            try w.write(datasets: floats, integers: ints, config: cfg)
            var count = floats.count + ints.count
            try withReferenceProgress {
                try be.stream(s, variant: variant) { p, d in
                    guard !(p == "params/pos_embed" || p == "params/decoder_pos_embed") else { return }   // the setup's are written
                    try w.write(p, d)
                    count += 1
                }
            }
            try w.finish(cfgScale: s.sampler?.cfgScale)
            print("wrote \(out): \(count) datasets (\(be.rawValue), config \(cfg.name))")
        }
    }
}
