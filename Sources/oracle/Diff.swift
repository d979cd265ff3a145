import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange

struct Diff: ParsableCommand {
    /// The numbers the help states, from the code that applies them.
    private static let f64 = Tolerances.rule(for: "activations/x", .float64, .float64, lr: 1)
    private static let f32 = Tolerances.rule(for: "activations/x", .float32, .float64, lr: 1)
    private typealias L = CalibrationLimits
    private static let fastBackends = Backend.allCases.filter { $0.mode != nil }.map(\.rawValue).joined(separator: ", ")

    static let configuration = CommandConfiguration(
        abstract: "Compare two runs tensor by tensor and say where they part.",
        discussion: """
        Each side is a backend (ref: float64 reference; ref80: the same code in Float80; \(fastBackends): the float32 / mixed-precision fast path) or an HDF5 file in the SPEC §7 layout. With a file on one side, the backend on the other side reruns that file's config, /params, /teacher, /inputs and /sampler setup, and every dataset recorded on both sides is compared: activations, losses, gradients, the state after one step, the sampler trajectory (and pos_embed tables against SPEC's formula). With two backends, both run a seeded random setup (--config, --seed, --batch, ...).

        Rule: a tensor passes when every element has
          |a - e| <= atol + rtol*|e|
        e being the more precise side (b on a tie) and atol = atol_abs + atol_scale*max|e| of that tensor. max rel is |a - e| / (|e| + atol/rtol): it does not blow up near zero, and max rel <= rtol is exactly the pass rule. Tolerances depend on the precisions of both sides (float64 pair: rtol \(short(f64.rtol)), atol \(short(f64.atolScale))*max|e|; float32 against float64: rtol \(short(f32.rtol)), atol \(short(f32.atolAbs)) + \(short(f32.atolScale))*max|e|; after-step parameters are judged in units of lr; see README "Tolerances"). NaN or Inf on either side always fails.

        Output is in forward-pass order (gradients in backward-pass order), so the first FAIL is the first place to look. The last line reads
          compared N, failed M, only-in-a X, only-in-b Y
          [; not recorded, not compared: GROUPS]
        Exit status 0 only when something was compared, M is 0, and no dataset is missing on one side within the groups both record (unless --allow-missing); 1 on a mismatch; 2 on bad input. Groups a file does not record are listed, not compared.

        Calibration: a file is judged in its precision mode (\(PrecisionMode.allCases.filter { $0 != .float64 }.map(\.rawValue).joined(separator: ", "))), taken from --b fast-MODE, from the file's root attribute precision_mode, or from its values; each tensor's norm-wise error must stay within the mode's limit (x\(short(L.float32)) float32 and tf32-conv, x\(short(L.tf32)) tf32, x\(short(L.half)) fp16 / bf16 and x\(short(L.halfGradients)) their gradients, x\(short(L.sampler)) sampler states; against the mode's own backend one more) of the fast path's error in that mode on the file's setup. A reduced mode's report states, per group, the least change a pass could have missed; a failing file gets a diagnosis naming the mode that explains its errors, or none. If the calibration cannot run (memory) the verdict fails unless --uncalibrated.

        Naming the bug (--explain): when a file fails against a backend, the fast path is rerun on its setup with each known divergence that can act where the file first parts from a correct rerun (exact GELU, LayerNorm eps 1e-5, c_noise, a mask token, DINO temperatures and centering, AdamW's lr / weight decay / eps fitted from the file, the EMA's beta and order, ...; README "Naming the bug"); one (or up to three together) that the file agrees with everywhere is printed as "explained by: ...", else "not explained by any of N known divergences".

        Examples:
          oracle diff --a fixtures/public_train_tiny.h5 --b ref
          oracle diff --a fast --b ref --config tiny
          oracle diff --a ref80 --b ref --config tiny --seed 3
          oracle diff --a mine.h5 --b theirs.h5 --json
        """)

    @Option(help: "Side a: a backend (\(Backend.allValueStrings.joined(separator: ", "))) or an HDF5 file.") var a: Side
    @Option(help: "Side b: a backend or an HDF5 file.") var b: Side
    @OptionGroup var setup: SetupOptions
    @Option(help: "Override the relative tolerance of every tensor.") var rtol: Double?
    @Option(help: "Override the absolute tolerance of every tensor (drops the max|e| scale term).") var atol: Double?
    @Flag(name: .customLong("allow-missing"), help: "Do not fail when a recorded group lacks some datasets on one side (a gradient of a fixed parameter still fails).")
    var allowMissing = false
    @Flag(help: "Accept a file whose calibrated verdict could not run (memory) on the blanket rule alone; without it such a run exits 1.")
    var uncalibrated = false
    @Flag(help: "When a file fails against a backend, name the cause: rerun the fast path with each known divergence that can act where the file first disagrees (README \"Naming the bug\") and report the one (or the few together) the file agrees with, and the values its step was fitted to.")
    var explain = false
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(help: "Print every tensor, not only the failing ones.") var verbose = false

    func validate() throws {
        let backends = [a, b].compactMap(\.backend)
        if backends.count == 2 { try setup.checkStepMemory(backends) }   // a file's run is checked once its setup is read
    }

    func run() throws {
        var o = DiffOptions()
        o.config = try setup.modelConfig()
        o.seed = setup.seed; o.batch = setup.batch; o.maskRatio = setup.maskRatio
        o.sampleSteps = setup.sample; o.cfgScale = setup.cfgScale
        o.rtol = rtol; o.atol = atol; o.allowMissing = allowMissing; o.allowUncalibrated = uncalibrated
        var report = try reportingErrors { try withReferenceProgress { try DiffEngine.run(a: a, b: b, options: o) } }
        if explain, !report.passed {
            switch (a, b) {
            case (.file(let p), .backend), (.backend, .file(let p)):
                // the verdict stands whatever happens here; what stopped the explanation is said
                do { report.explanations = try Explainer.explain(p, report: report, options: o) } catch {
                    report.notes.append("note: --explain could not run: \(error)")
                }
            default:
                report.notes.append("note: --explain names causes for one file against a backend; not run here")
            }
        }
        if json {
            let d = try JSONSerialization.data(withJSONObject: report.json, options: [.prettyPrinted, .sortedKeys])
            print(String(data: d, encoding: .utf8)!)
        } else {
            report.lines(verbose: verbose).forEach { print($0) }
        }
        if !report.passed { throw ExitCode(1) }
    }
}
