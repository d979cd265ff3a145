import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTTraining
import SDDiTFast
import SDDiTReference

struct Train: ParsableCommand {
    /// The run's defaults (`TrainOptions`'s), which the help states.
    private static let defaults = TrainOptions(config: .tiny)
    /// The learning rate of a run without --lr (the oracle's, not the config's).
    static let defaultLR = 1e-3

    static let configuration = CommandConfiguration(
        abstract: "Train SD-DiT on the fast path on a synthetic class-conditional latent dataset.",
        discussion: """
        The dataset is made from --data-seed for the config's latent shape: per class a smooth template (low-frequency plane waves per channel), per sample a random amplitude, phase shift and white noise; std about sigma_data = 0.5; \(defaults.trainSize) training and \(defaults.heldOutSize) held-out samples. Minibatch k (examples, null labels for guidance, sigma, noise, mask) is a pure function of (--seed, k), so a resumed run reproduces an uninterrupted one bit for bit.

        Progress: a one-line bar on stderr when it is a terminal, otherwise a plain line on stdout every --log-every steps: window means of L_G, L_D^cls, L_D^patch and the total, steps/s, the loss scale. The last line gives the held-out generative loss (L_G with the EDM weighting at 8 fixed sigmas and fixed noise, no mask: comparable across runs). A window averages its finite steps and counts the others ("0.58 (3 inf)").

        Quiet failures (always watched; a warning in the progress output, the summary and the checkpoint, once each): GradScaler collapse (the scale fallen 2^\(QuietFailureMonitor.collapseHalvings) below its start without growing back, or below 1, with the gradient tensors the half type flushes while float32 resolves them), and training that stops moving (the update-to-weight ratio's \(StallMonitor.window)-step mean below \(short(100 * StallMonitor.fraction))% of its early level, the median of its first \(StallMonitor.early) applied updates, while a step leaves most elements unchanged; the ratio is column 7 of the checkpoint's /train/history).

        Examples:
          oracle train --config tiny --steps 300
          oracle train --steps 300 --checkpoint run.h5 --checkpoint-every 100
          oracle train --resume run.h5 --checkpoint run.h5
          oracle train --steps 300 --ablations          # paper table 3 in miniature
          # stops at the first NaN/Inf (lambda(sigma) in fp16):
          oracle train --precision fast-fp16-pure --anomaly
        """)

    @Option(help: "Model config: tiny, S/2, B/2, XL/2.") var config: String?
    @Option(help: "The fast path's precision (default \(defaults.precision.argumentName)).") var precision: FastPrecision?
    @Option(help: "Length of the run (the EMA schedule spans it; default \(defaults.steps), or the checkpoint's).") var steps: Int?
    @Option(help: "Minibatch size (default \(defaults.batch)).") var batch: Int?
    @Option(help: "AdamW learning rate (default \(short(defaultLR))).") var lr: Double?
    @Option(help: "Seed of the init and of the per-step draws (default \(defaults.seed)).") var seed: UInt64?
    @Option(name: .customLong("data-seed"), help: "Seed of the synthetic dataset (default \(defaults.dataSeed)).") var dataSeed: UInt64?
    @Option(name: .customLong("init-mode"), help: "Parameter init: dit (adaLN-Zero) or random (every tensor non-zero); default \(defaults.initMode.rawValue).")
    var initMode: Initialization.Mode?
    @Option(name: .customLong("mask-ratio"), help: "Mask ratio in [0, 1) (default the config's, \(short(ModelConfig.tiny.maskRatio))).") var maskRatio: Double?
    @Flag(name: .customLong("no-discriminative"), help: "Ablation: train on L_G alone (weight 0 on L_D^cls + L_D^patch).")
    var noDiscriminative = false
    @Option(name: .customLong("label-dropout"), help: "Probability of the null label in training (default \(short(defaults.labelDropout)), for guidance).")
    var labelDropout: Double?
    @Option(help: "tau_T warm-up steps (default a tenth of the run).") var warmup: Int?
    @Flag(help: "Stop at the first non-finite value with the fast path's report (exit 1).") var anomaly = false
    @Option(help: "Write a checkpoint (SPEC §7 layout + /train) here at the end.") var checkpoint: String?
    @Option(name: .customLong("checkpoint-every"), help: "Also write it every K steps.") var checkpointEvery: Int = 0
    @Option(help: "Continue from this checkpoint (its config and options).") var resume: String?
    @Option(name: .customLong("stop-at"), help: "Stop after this many steps of the run (an interruption: resume continues).")
    var stopAt: Int?
    @Option(name: .customLong("eval-every"), help: "Held-out generative loss every K steps (0: only at the end).") var evalEvery: Int = 0
    @Option(name: .customLong("log-every"), help: "Plain progress line every K steps (default a tenth of the run).") var logEvery: Int?
    @Flag(help: "Run the paper's table-3 ablations (full; --no-discriminative; --mask-ratio 0) and print a table.")
    var ablations = false

    func validate() throws {
        if let s = steps, s < 1 { throw ValidationError("--steps must be at least 1, found \(s)") }
        if let b = batch, b < 1 { throw ValidationError("--batch must be at least 1, found \(b)") }
        if let r = maskRatio, !(r >= 0 && r < 1) { throw ValidationError("--mask-ratio must lie in [0, 1), found \(r)") }
        if let l = lr, !(l >= 0 && l.isFinite) { throw ValidationError("--lr must be a non-negative number, found \(l)") }
        if let d = labelDropout, !(d >= 0 && d <= 1) { throw ValidationError("--label-dropout must lie in [0, 1], found \(d)") }
        if let w = warmup, w < 1 { throw ValidationError("--warmup must be at least 1, found \(w)") }
        if checkpointEvery < 0 || evalEvery < 0 { throw ValidationError("--checkpoint-every and --eval-every must be >= 0") }
        if checkpointEvery > 0 && checkpoint == nil { throw ValidationError("--checkpoint-every needs --checkpoint PATH") }
        if let c = checkpoint { try requireWritableOutput(c, option: "--checkpoint") }
        if let l = logEvery, l < 1 { throw ValidationError("--log-every must be at least 1") }
        if let s = stopAt, s < 1 { throw ValidationError("--stop-at must be at least 1") }
        if ablations && (resume != nil || checkpoint != nil || noDiscriminative) {
            throw ValidationError("--ablations runs three fresh runs: it takes no --resume, --checkpoint or --no-discriminative")
        }
        if resume != nil {
            let fixed: [(String, Bool)] = [("--config", config != nil), ("--precision", precision != nil), ("--batch", batch != nil),
                                           ("--lr", lr != nil), ("--seed", seed != nil), ("--data-seed", dataSeed != nil),
                                           ("--mask-ratio", maskRatio != nil), ("--no-discriminative", noDiscriminative),
                                           ("--label-dropout", labelDropout != nil), ("--warmup", warmup != nil),
                                           ("--init-mode", initMode != nil)]
            if let f = fixed.first(where: { $0.1 }) {
                throw ValidationError("\(f.0) cannot be given with --resume: the checkpoint fixes it (only --steps, --checkpoint, --eval-every, --stop-at, --anomaly apply)")
            }
        }
    }

    func options() throws -> TrainOptions {
        guard var cfg = ModelConfig.named(config ?? "tiny") else {
            throw ValidationError("unknown config '\(config ?? "")'; expected one of: tiny, S/2, B/2, XL/2")
        }
        cfg.lr = lr ?? Self.defaultLR
        if let r = maskRatio { cfg.maskRatio = r }
        var o = TrainOptions(config: cfg)
        if let precision { o.precision = precision }
        if let steps { o.steps = steps }
        if let batch { o.batch = batch }
        if let seed { o.seed = seed }
        if let dataSeed { o.dataSeed = dataSeed }
        o.discriminativeWeight = noDiscriminative ? 0 : 1
        if let labelDropout { o.labelDropout = labelDropout }
        o.warmupSteps = warmup
        if let initMode { o.initMode = initMode }
        do { try cfg.checkMemory(batch: o.batch, available: Double(ProcessInfo.processInfo.physicalMemory)) } catch {
            throw ValidationError("\(error)")
        }
        do { try o.validate() } catch { throw ValidationError("\(error)") }
        return o
    }

    func run() throws {
        if ablations { return try runAblations() }
        let t: Trainer = try reportingErrors {
            if let r = resume { return try Trainer.resume(r, steps: steps) }
            return try Trainer(try options())
        }
        let o = t.options
        let mode = o.precision.argumentName
        print("train: config \(o.config.name), \(mode), batch \(o.batch), lr \(o.config.lr), mask ratio \(o.config.maskRatio), "
              + "L_D weight \(o.discriminativeWeight), steps \(o.steps), seed \(o.seed), data seed \(o.dataSeed)"
              + (resume.map { ", resumed from \($0) at step \(t.step)" } ?? ""))
        t.model.monitor.anomaly = anomaly
        t.model.monitor.anomalyLeavesBackwardToScaler = true   // fp16 modes: GradScaler skips those steps
        let end = min(stopAt ?? o.steps, o.steps)
        let clock = ContinuousClock(), t0 = clock.now
        let bar = ProgressBar(total: o.steps, every: logEvery ?? max(o.steps / 10, 1))
        let firstStep = t.step
        do {
            while t.step < end {
                let rec = try t.trainStep()
                if let q = t.quiet.failure, q.step == rec.step { bar.message("warning: " + q.description) }
                if let q = t.stall.stall, q.step == rec.step { bar.message("warning: " + q.description) }
                bar.update(rec, t, elapsed: (clock.now - t0).seconds, since: firstStep)
                if evalEvery > 0, t.step % evalEvery == 0, t.step < end {
                    let l = try reportingErrors { try t.evaluate() }
                    bar.message(String(format: "eval step %d: held-out L_G %.4f", t.step, l))
                }
                if let c = checkpoint, checkpointEvery > 0, t.step % checkpointEvery == 0 {
                    try reportingErrors { try t.writeCheckpoint(c) }
                }
            }
        } catch let a as TrainAnomaly {
            throw stopped(by: a, bar)
        }
        bar.finish()
        let secs = (clock.now - t0).seconds
        let held = try reportingErrors { try t.evaluate() }
        if let c = checkpoint { try reportingErrors { try t.writeCheckpoint(c) } }
        let w = max(t.step / 10, 1), ran = t.step - firstStep
        print(String(format: "done: step %d/%d, %d steps in %.1f s (%.1f steps/s); ", t.step, o.steps, ran, secs, Double(ran) / max(secs, 1e-9))
              + "L_G \(t.windowMean(0, 0..<w)) -> \(t.windowMean(0, (t.step - w)..<t.step)), total \(t.windowMean(3, 0..<w)) -> \(t.windowMean(3, (t.step - w)..<t.step)) "
              + String(format: "(means of the finite steps among the first and last %d); skipped %d, loss scale %g", w, t.history.filter { $0[4] != 0 }.count, t.model.scaler.scale))
        print(String(format: "held-out L_G %.4f at step %d", held, t.step) + (checkpoint.map { "; checkpoint \($0)" } ?? ""))
        if let q = t.quiet.failure { print("warning: " + q.description) }
        if let q = t.stall.stall { print("warning: " + q.description) }
    }

    /// The report of a run `--anomaly` stopped, and its exit status.
    func stopped(by a: TrainAnomaly, _ bar: ProgressBar) -> ExitCode {
        bar.finish()
        print("anomaly at step \(a.step) (--anomaly): \(a.error.description)")
        print("why: \(a.explanation)")
        return ExitCode(1)
    }

    func runAblations() throws {
        let base = try options()
        let runs: [(String, TrainOptions)] = [
            ("SD-DiT (L_G + L_D, mask \(base.config.maskRatio))", base),
            ("w/o discriminative loss (L_G only)", { var o = base; o.discriminativeWeight = 0; return o }()),
            ("mask ratio 0", { var o = base; o.config.maskRatio = 0; return o }()),
        ]
        let mode = base.precision.argumentName
        print("ablations (paper table 3 in miniature): config \(base.config.name), \(mode), \(base.steps) steps, batch \(base.batch), lr \(base.config.lr), seed \(base.seed), data seed \(base.dataSeed)")
        var rows: [(String, Double, Double, Double, Double)] = []
        for (name, o) in runs {
            let t = try reportingErrors { try Trainer(o) }
            t.model.monitor.anomaly = anomaly
            t.model.monitor.anomalyLeavesBackwardToScaler = true
            let clock = ContinuousClock(), t0 = clock.now
            let bar = ProgressBar(total: o.steps, every: logEvery ?? max(o.steps / 5, 1), prefix: name + ": ")
            do {
                while t.step < o.steps { bar.update(try t.trainStep(), t, elapsed: (clock.now - t0).seconds, since: 0) }
            } catch let a as TrainAnomaly {
                throw stopped(by: a, bar)
            }
            bar.finish()
            let secs = (clock.now - t0).seconds
            let held = try reportingErrors { try t.evaluate() }
            let w = max(o.steps / 10, 1)
            rows.append((name, held, t.mean(0, (o.steps - w)..<o.steps), t.mean(1, (o.steps - w)..<o.steps) + t.mean(2, (o.steps - w)..<o.steps), secs))
        }
        print("")
        print("run                                         held-out L_G   train L_G (last 10%)   L_D (last 10%)   time")
        for r in rows {
            print(r.0.padding(toLength: 44, withPad: " ", startingAt: 0)
                  + String(format: "%12.4f   %20.4f   %14.4f   %5.1f s", r.1, r.2, r.3, r.4))
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// Progress: an updating one-line bar on stderr when it is a terminal; otherwise a plain
/// line on stdout every `every` steps and at the end. Window means since the last line.
final class ProgressBar {
    let total: Int, every: Int, prefix: String
    let tty = isatty(STDERR_FILENO) != 0
    var window: [TrainRecord] = []
    var lastDraw = -1.0
    var last: String = ""

    init(total: Int, every: Int, prefix: String = "") { self.total = total; self.every = every; self.prefix = prefix }

    func line(_ t: Trainer, _ rec: TrainRecord, elapsed: Double, since: Int) -> String {
        // window means of the finite steps, with the count of the others (a skipped step's
        // loss is inf): one overflow in a window never turns its mean into "inf"
        func m(_ f: (TrainRecord) -> Double) -> String { WindowMean(window.map(f)).description }
        let sps = Double(rec.step - since) / max(elapsed, 1e-9)
        let skipped = window.filter(\.skipped).count
        return prefix + "step \(rec.step)/\(total)  L_G \(m(\.generative))  L_D^cls \(m(\.disCls))  L_D^patch \(m(\.disPatch))  total \(m(\.total))  "
            + String(format: "%.1f steps/s  loss scale %g", sps, rec.lossScale)
            + (skipped > 0 ? "  (\(skipped) skipped)" : "")
    }

    func update(_ rec: TrainRecord, _ t: Trainer, elapsed: Double, since: Int) {
        window.append(rec)
        if tty {
            if window.count > 20 { window.removeFirst() }
            guard elapsed - lastDraw >= 0.1 || rec.step == total else { return }
            lastDraw = elapsed
            let width = 20, filled = width * rec.step / max(total, 1)
            let bar = "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] "
            last = line(t, rec, elapsed: elapsed, since: since)
            FileHandle.standardError.write(("\r" + bar + last + "\u{1B}[K").data(using: .utf8)!)
        } else if rec.step % every == 0 || rec.step == total {
            print(line(t, rec, elapsed: elapsed, since: since))
            fflush(nil)
            window = []
        }
    }

    func message(_ s: String) {
        if tty { FileHandle.standardError.write(("\r\u{1B}[K" + s + "\n").data(using: .utf8)!) } else { print(s) }
    }

    func finish() { if tty && lastDraw >= 0 { FileHandle.standardError.write("\n".data(using: .utf8)!) } }
}
