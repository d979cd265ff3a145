import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTReference

@main
struct Oracle: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oracle",
        abstract: "The SD-DiT verification oracle: a float64 reference and tensor-by-tensor comparisons.",
        discussion: """
        Compare your SD-DiT (PyTorch, JAX, ...) with the float64 reference: write your run in the "sddit-oracle/1" HDF5 layout (SPEC §7) and ask where it parts from the truth.

          oracle diff --a my_run.h5 --b ref   # the reference reruns your setup
          oracle dump --backend ref --config tiny --out tiny.h5 --sample 5
          oracle info tiny.h5                     # or: oracle info XL/2
        """,
        subcommands: [Diff.self, Dump.self, Info.self, PrecisionCmd.self, Bench.self, Train.self, Sample.self, Regress.self])

    static func main() {
        // The reference allocates a fresh array per activation (up to tens of MB at S/2): kept
        // on the heap (glibc's largest mmap threshold, 32 MiB, and no trimming) a freed one is
        // reused instead of mapped anew, whose page faults took a quarter of an S/2 run.
        Product.keepFreedMemory()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            // ArgumentParser lists more than five values one a line: refused in one line here,
            // as every other bad input is (then its usage lines, as it prints them)
            let text = fullMessage(for: error)
            guard exitCode(for: error) == .validationFailure, let one = valuesOnOneLine(text) else { exit(withError: error) }
            FileHandle.standardError.write((one + "\n").data(using: .utf8)!)
            exit(withError: ExitCode.validationFailure)
        }
    }

    /// `text` with ArgumentParser's list of valid values ("Please provide one of the
    /// following:" and a line "  - VALUE" each) on its first line; nil when it has none.
    static func valuesOnOneLine(_ text: String) -> String? {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let head = ". Please provide one of the following:"
        guard let i = lines.firstIndex(where: { $0.hasSuffix(head) }) else { return nil }
        let values = lines[(i + 1)...].prefix { $0.hasPrefix("  - ") }.map { String($0.dropFirst(4)) }
        guard !values.isEmpty else { return nil }
        lines[i] = String(lines[i].dropLast(head.count)) + ". Please provide one of: " + values.joined(separator: ", ") + "."
        lines.removeSubrange((i + 1)...(i + values.count))
        return lines.joined(separator: "\n")
    }
}

/// Options shared by commands that build a run from a config and a seed.
struct SetupOptions: ParsableArguments {
    @Option(help: "Model config: tiny, S/2, B/2, XL/2 (an SD-DiT- prefix is accepted).")
    var config: String = "tiny"
    @Option(help: "Seed for parameters and inputs (same seed, same numbers).")
    var seed: UInt64 = 0
    @Option(help: "Batch size N.")
    var batch: Int = 2
    @Option(name: .customLong("mask-ratio"), help: "Mask ratio in [0, 1) (default: the config's, \(short(ModelConfig.tiny.maskRatio))).")
    var maskRatio: Double?
    @Option(help: "Also run the Heun sampler for this many steps (0: no sampler).")
    var sample: Int = 5
    @Option(name: .customLong("cfg-scale"), help: "Classifier-free guidance scale for the sampler.")
    var cfgScale: Double?

    func modelConfig() throws -> ModelConfig {
        guard let c = ModelConfig.named(config) else {
            throw ValidationError("unknown config '\(config)'; expected one of: tiny, S/2, B/2, XL/2")
        }
        return c
    }

    func validate() throws {
        _ = try modelConfig()
        if batch < 1 { throw ValidationError("--batch must be at least 1, found \(batch)") }
        if let r = maskRatio, !(r >= 0 && r < 1) { throw ValidationError("--mask-ratio must lie in [0, 1), found \(r)") }
        if sample < 0 || sample == 1 { throw ValidationError("--sample must be 0 (no sampler) or at least 2 steps, found \(sample)") }
    }
}

extension SetupOptions {
    /// Refuses, before allocating, a run whose estimate (`need`: bytes, for `what`) exceeds the machine's memory.
    func checkMemory(need: (ModelConfig) -> Double, what: String) throws {
        let cfg = try modelConfig()
        do { try cfg.checkMemory(need: need(cfg), what: what, available: Double(ProcessInfo.processInfo.physicalMemory)) } catch {
            throw ValidationError("\(error)")
        }
    }
    /// A seeded run of `backends` at this batch, each by its own estimate; of two, the first's
    /// results (gradients and both after-step copies, in Double) are held while the second runs.
    func checkStepMemory(_ backends: [Backend]) throws {
        let r = try maskRatio ?? modelConfig().maskRatio
        try checkMemory(need: { cfg in
            let v = cfg.visibleCount(maskRatio: r), n = max(batch, 1)
            let held = backends.count > 1 ? 8 * Double(2 * cfg.parameterCounts.total + cfg.parameterCounts.encoder + cfg.parameterCounts.head) : 0
            return (backends.map { $0.estimatedStepBytes(cfg, batch: n, visible: v) }.max() ?? 0) + held
        }, what: "a training step at batch \(batch)")
    }
}

/// Runs `body`, turning any error into one line on stderr and exit status 2.
func reportingErrors<R>(_ body: () throws -> R) throws -> R {
    do { return try body() } catch let e as ExitCode { throw e } catch let e as ValidationError { throw e } catch {
        FileHandle.standardError.write(("error: \(error)\n").data(using: .utf8)!)
        throw ExitCode(2)
    }
}

/// Refuses an output path whose directory is missing or not writable before any work is done
/// (a long run must not end on "cannot create").
func requireWritableOutput(_ path: String, option: String) throws {
    let dir = (path as NSString).deletingLastPathComponent
    let d = dir.isEmpty ? "." : dir
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
        throw ValidationError("\(option) \(path): directory '\(d)' does not exist")
    }
    guard FileManager.default.isWritableFile(atPath: d) else {
        throw ValidationError("\(option) \(path): directory '\(d)' is not writable")
    }
}

/// A number as help texts print it: 16, 0.2, 1e-4, 2.5e-9 (a power of ten below 0.01 as one).
func short(_ x: Double) -> String {
    guard x != 0, abs(x) < 0.01 else { return String(format: "%g", x) }
    let parts = String(format: "%.5e", x).split(separator: "e")   // "1.00000e-04"
    var mantissa = String(parts[0])
    while mantissa.hasSuffix("0") { mantissa.removeLast() }
    if mantissa.hasSuffix(".") { mantissa.removeLast() }
    return mantissa + "e" + String(Int(parts[1])!)
}
