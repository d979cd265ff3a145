import ArgumentParser
import Foundation
import SDDiTBench

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time SD-DiT-S/2 training, plain DiT-S/2 training, denoising and sampling on this machine.",
        discussion: """
        A benchmark, not a test. In one process, at batch 8 on SD-DiT-S/2
        (latent 32x32x4), it times:
          sddit-s2-train     one SD-DiT training step, mask ratio 0.2: student
                             forward + backward, teacher forward, all losses,
                             AdamW, EMA, centers
          dit-s2-train       one plain DiT-S/2 training step: 12 blocks over
                             256 tokens, final layer, EDM loss, AdamW (no CLS,
                             decoder, teacher or head)
          sddit-s2-denoise   one denoiser evaluation D(x; sigma), all tokens
          sddit-s2-sample40  a 40-step Heun sample (79 evaluations, no CFG)
        on the backends fast (float32, OpenBLAS), fast-fp16, fast-bf16
        (autocast-style matmul rounding), fast-fp16-pure, fast-bf16-pure
        (every tensor rounded) and ref (the float64 reference: its kernels,
        with the plain loops' bits, on the same threads). Default: every
        case on every backend.

        Per case: the median of --reps timed runs after --warmup runs; the
        case's FLOPs (matrix products, multiply-add = 2; --verbose lists them
        by component; sddit-s2-train is about 763 GFLOP); GFLOP/s; that as a
        fraction of this machine's peak (sgemm 2048^3 float32 on OpenBLAS in
        the fast path's fixed tiles, best of 5, measured at start with the
        same threads; for ref the same with dgemm, float64: the yardstick
        only, the reference calls no BLAS); the peak RSS
        during the case (high-water mark reset through /proc/self/clear_refs
        before each case, then getrusage ru_maxrss; marked * if the reset was
        refused and the figure is the process peak so far).

        The reference takes about half a minute per S/2 training step and ten
        seconds per denoiser evaluation, and runs with --warmup and --reps
        like the rest, except ref sddit-s2-sample40: the median denoiser
        evaluation x 79, marked "(extrapolated)" ("extrapolated": true in
        JSON). There is no reference plain DiT: ref dit-s2-train is n/a.
        With --peer, ref sddit-s2-train is also compared with PyTorch's
        float64 step (the peer's case iv).

        Threads: OpenBLAS gets --threads (default 2; it would take every
        core); the fast path's own parallel loops use as many. Two OpenBLAS
        settings are read only when the library loads, so the command
        re-executes itself once with them set (and says so):
          OPENBLAS_CORETYPE        0.3.21 does not know some recent CPUs
              (e.g. Xeon family 6 model 207) and falls back to Prescott
              (SSE3) kernels, ~5x below the CPU's sgemm speed; --blas-core
              auto then picks SkylakeX (AVX-512) or Haswell (AVX2)
          OPENBLAS_THREAD_TIMEOUT  idle OpenBLAS threads busy-wait ~0.1 s
              (2^28 cycles) after each call and so hold the second core
              while the fast path's own loops want it; 4 lets them sleep
        Variables already set are left alone; "keep" leaves OpenBLAS as is.
        Other programs (oracle diff, a training loop) get the same speed
        with the same two variables exported.

        --peer PATH runs the PyTorch speed peer after the Swift cases:
          python3 PATH --cases <those selected> --alloc both
                  --reps R --warmup W
        (the peer pins torch to 2 threads itself, and runs each case with
        glibc malloc as it is and "tuned": told to keep freed memory, as a
        user who cares about speed runs it), echoes its lines, and prints
        fast/peer = median of the fast float32 backend / the peer's median,
        for (i) sddit-s2-train, (ii) dit-s2-train and (iii)
        sddit-s2-denoise, against each allocator. Below 1: the fast path is
        faster. The tuned allocator's ratio is the one that counts;
        --peer-alloc tuned (or default) runs only that one.

        Example: the issue's target, one run on a 2-core Xeon (AVX-512), quiet
        machine (lines shortened):
          $ oracle bench --case sddit-s2-train --backend fast --reps 5 \\
                --warmup 1 --peer ../shared/peer/peer_bench.py
          note: OpenBLAS chose Prescott kernels for this CPU; set
                OPENBLAS_CORETYPE=SkylakeX ...
          sgemm peak: 342.1 GFLOP/s (tiled sgemm 2048x2048x2048 float32 ...)
          case            backend  median ms  min ms  GFLOP  GFLOP/s  of peak
          sddit-s2-train  fast        3981.6  3899.0  763.1    191.7    0.560
          peer| (i) SD-DiT-S/2 train step, f32, B=8, mask 0.2 [default
                malloc]: median 3690 ms, runs [4057, 3677, 3608, 3690, 3701]
          ours / peer (PyTorch, 2 threads; ...), medians; ...
            sddit-s2-train  fast 3982 ms  peer (i, tuned malloc) ...
        Times on such shared machines vary by 5-10% from run to run; the
        command measures the sgemm peak again at the end and warns when the
        machine's speed changed.

        More:
          oracle bench --case sddit-s2-denoise,dit-s2-train \\
              --backend fast,fast-bf16 --json
          oracle bench --case sddit-s2-train --backend ref --reps 3 \
              --peer ../shared/peer/peer_bench.py   # ref / PyTorch float64
          oracle bench --case dit-s2-train --backend fast --verbose
          oracle bench --case sddit-s2-train --backend fast --profile
        """)

    @Option(name: .customLong("case"), parsing: .singleValue,
            help: "Case(s) to run (repeatable or comma-separated): \(Bench.allCases.joined(separator: ", ")) (default: all).")
    var cases: [String] = []
    @Option(name: .customLong("backend"), parsing: .singleValue,
            help: "Backend(s) (repeatable or comma-separated): \(Bench.allBackends.joined(separator: ", ")) (default: all).")
    var backends: [String] = []
    @Option(help: "Timed runs per case (median reported).") var reps: Int = 5
    @Option(help: "Untimed warm-up runs per case.") var warmup: Int = 1
    @Option(help: "Threads of OpenBLAS, the fast path and the reference's kernels.") var threads: Int = 2
    @Option(help: "Seed for parameters and inputs.") var seed: UInt64 = 0
    @Option(help: "Path of the PyTorch peer (peer_bench.py) to run after the Swift cases for fast/peer ratios.")
    var peer: String?
    @Option(name: .customLong("python"), help: "Python interpreter for --peer.") var python: String = "python3"
    @Option(name: .customLong("peer-alloc"),
            help: "The peer's allocator: both (glibc malloc as is, and tuned to keep freed memory; the tuned ratio counts), tuned, or default.")
    var peerAlloc: String = "both"
    @Flag(help: "Print one JSON object per case (and per peer comparison) on stdout; progress goes to stderr.")
    var json = false
    @Flag(help: "Also print each case's FLOPs by component and every run's time.") var verbose = false
    @Flag(help: "After a fast sddit-s2-train case, time its blocks and kernels one by one (where the step's time goes).")
    var profile = false
    @OptionGroup var blas: BLASEnvironment

    static let allCases = BenchOptions.allCases
    static let allBackends = BenchOptions.allBackends

    var selectedCases: [String] {
        let c = cases.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        return c.isEmpty ? Self.allCases : Self.allCases.filter { c.contains($0) }
    }
    var selectedBackends: [String] {
        let b = backends.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        return b.isEmpty ? Self.allBackends : Self.allBackends.filter { b.contains($0) }
    }

    func validate() throws {
        for c in cases.flatMap({ $0.split(separator: ",") }) where !Self.allCases.contains(String(c).trimmingCharacters(in: .whitespaces)) {
            throw ValidationError("unknown case '\(c)'; expected one of: \(Self.allCases.joined(separator: ", "))")
        }
        for b in backends.flatMap({ $0.split(separator: ",") }) where !Self.allBackends.contains(String(b).trimmingCharacters(in: .whitespaces)) {
            throw ValidationError("unknown backend '\(b)'; expected one of: \(Self.allBackends.joined(separator: ", "))")
        }
        if reps < 1 { throw ValidationError("--reps must be at least 1, found \(reps)") }
        if warmup < 0 { throw ValidationError("--warmup must be at least 0, found \(warmup)") }
        if threads < 1 { throw ValidationError("--threads must be at least 1, found \(threads)") }
        if let p = peer, !FileManager.default.fileExists(atPath: p) { throw ValidationError("--peer: no file at '\(p)'") }
        if !["both", "tuned", "default"].contains(peerAlloc) {
            throw ValidationError("--peer-alloc must be both, tuned or default, found '\(peerAlloc)'")
        }
    }

    func run() throws {
        try blas.prepare()
        var o = BenchOptions(cases: selectedCases, backends: selectedBackends, reps: reps, warmup: warmup, threads: threads,
                             seed: seed, peer: peer, python: python, json: json, verbose: verbose, profile: profile,
                             notes: BLASEnvironment.notes)
        o.peerAlloc = peerAlloc
        let line = StatusLine()
        o.status = { s in if let s { line.show(s) } else { line.clear() } }
        var runner = BenchRunner(options: o)
        try runner.runAll()
    }
}

