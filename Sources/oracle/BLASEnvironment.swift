import ArgumentParser
import Foundation
import Glibc
import SDDiTFast

/// The two OpenBLAS settings that are read only when the library loads, for commands whose
/// timings should reflect this CPU (`oracle bench`, `oracle regress record`). The command
/// re-executes itself once with them in the environment (a variable already set is left alone):
/// - OPENBLAS_CORETYPE: 0.3.21 picks kernels from the CPU's family and model and does not know
///   recent Xeons (e.g. family 6 model 207): it falls back to Prescott (SSE3) kernels, ~5x below
///   the CPU's sgemm speed. auto: SkylakeX (AVX-512) or Haswell (AVX2) when that happened.
/// - OPENBLAS_THREAD_TIMEOUT: after each call OpenBLAS's helper threads busy-wait for 2^28
///   cycles (~0.1 s) before sleeping, so they hold the other core while the fast path's own
///   loops (GELU, softmax, attention per head) want it; 4 (2^4 cycles) lets them sleep at once.
struct BLASEnvironment: ParsableArguments {
    @Option(name: .customLong("blas-core"),
            help: "OpenBLAS kernel set: auto (if OpenBLAS fell back to Prescott on an AVX-512 / AVX2 CPU it does not know, rerun this process with OPENBLAS_CORETYPE=SkylakeX / Haswell), keep, or a name for OPENBLAS_CORETYPE.")
    var blasCore: String = "auto"
    @Option(name: .customLong("blas-thread-timeout"),
            help: "OPENBLAS_THREAD_TIMEOUT for this run (idle OpenBLAS threads spin 2^N cycles before sleeping; OpenBLAS's default is 28, ~0.1 s), or keep.")
    var blasThreadTimeout: String = "4"

    static let noteVariable = "ORACLE_BLAS_NOTE"

    func validate() throws {
        if blasThreadTimeout != "keep", !(Int(blasThreadTimeout).map { $0 >= 4 && $0 <= 30 } ?? false) {
            throw ValidationError("--blas-thread-timeout must be keep or an integer in 4...30, found '\(blasThreadTimeout)'")
        }
    }

    /// Re-executes this process with the settings when one is missing (does not return then);
    /// afterwards `notes` says what was set.
    func prepare() throws {
        let env = ProcessInfo.processInfo.environment
        var notes: [String] = []
        if blasCore != "keep", env["OPENBLAS_CORETYPE"] == nil {
            var target: String? = blasCore
            if blasCore == "auto" {
                target = nil
                if BLASInfo.coreName.lowercased() == "prescott" {
                    let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
                        .split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? []
                    if flags.contains("avx512f") && flags.contains("avx512bw") && flags.contains("avx512vl") { target = "SkylakeX" }
                    else if flags.contains("avx2") && flags.contains("fma") { target = "Haswell" }
                }
            }
            if let t = target {
                setenv("OPENBLAS_CORETYPE", t, 1)
                notes.append("OpenBLAS chose \(BLASInfo.coreName) kernels for this CPU; set OPENBLAS_CORETYPE=\(t)"
                             + (blasCore == "auto" ? " (--blas-core keep: leave it)" : ""))
            }
        }
        if blasThreadTimeout != "keep", env["OPENBLAS_THREAD_TIMEOUT"] == nil {
            setenv("OPENBLAS_THREAD_TIMEOUT", blasThreadTimeout, 1)
            notes.append("set OPENBLAS_THREAD_TIMEOUT=\(blasThreadTimeout): idle OpenBLAS threads sleep after 2^\(blasThreadTimeout) cycles instead of spinning ~0.1 s (--blas-thread-timeout keep: leave it)")
        }
        guard !notes.isEmpty else { return }
        setenv(Self.noteVariable, notes.joined(separator: "\n"), 1)
        let args = CommandLine.arguments
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &cargs)
        throw ValidationError("could not re-execute with the OpenBLAS settings (errno \(errno)); use --blas-core keep --blas-thread-timeout keep")
    }

    /// What `prepare` set before re-executing, one line each.
    static var notes: [String] {
        (ProcessInfo.processInfo.environment[noteVariable] ?? "").split(separator: "\n").map(String.init)
    }
}
