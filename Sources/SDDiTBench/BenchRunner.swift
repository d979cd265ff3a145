import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTFast
import SDDiTReference

/// What `oracle bench` was asked for (SDDiTBench runs it; the CLI parses it).
public struct BenchOptions: Sendable {
    public static let allCases = ["sddit-s2-train", "dit-s2-train", "sddit-s2-denoise", "sddit-s2-sample40"]
    public static let allBackends = ["fast", "fast-fp16", "fast-bf16", "fast-fp16-pure", "fast-bf16-pure", "ref"]
    public var cases: [String], backends: [String]
    public var reps: Int, warmup: Int, threads: Int
    public var seed: UInt64
    /// The PyTorch peer (peer_bench.py) and its interpreter.
    public var peer: String?, python: String
    /// The peer's allocator(s): "both" (default), "tuned" or "default" (its --alloc).
    public var peerAlloc = "both"
    public var json: Bool, verbose: Bool, profile: Bool
    /// What the OpenBLAS environment set before this run (printed as notes).
    public var notes: [String]
    /// A one-line status while a long case runs (nil: clear it); the CLI draws it on a terminal.
    public var status: @Sendable (String?) -> Void = { _ in }
    public init(cases: [String], backends: [String], reps: Int, warmup: Int, threads: Int, seed: UInt64, peer: String?,
                python: String, json: Bool, verbose: Bool, profile: Bool, notes: [String]) {
        self.cases = cases; self.backends = backends; self.reps = reps; self.warmup = warmup; self.threads = threads
        self.seed = seed; self.peer = peer; self.python = python; self.json = json; self.verbose = verbose
        self.profile = profile; self.notes = notes
    }
}

/// One case's measurement.
struct BenchResult {
    var caseName: String, backend: String
    var runsMs: [Double] = []
    var warmup = 0
    var flops: Double = 0
    var peakRSSMB: Double?
    var rssSinceReset = true
    /// The fast path's named buffers (parameters, gradients, AdamW moments, activations).
    var workspaceMB: Double?
    var extrapolated = false
    var notApplicable = false
    var notes: [String] = []
    var error: String?

    var medianMs: Double? {
        guard !runsMs.isEmpty else { return nil }
        let s = runsMs.sorted(), n = s.count
        return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }
    var gflops: Double? { medianMs.map { flops / ($0 / 1000) / 1e9 } }
}

public struct BenchRunner {
    let o: BenchOptions
    let cfg = ModelConfig.s2
    let batch = 8, maskRatio = 0.2, sampleSteps = 40
    var peak = 0.0
    /// dgemm's (measured when ref is selected): the reference's yardstick.
    var dpeak: Double?
    var results: [BenchResult] = []
    var rssResetOK = true
    /// The reference's denoiser time (ms), shared by ref denoise and ref sample40.
    var refDenoiseMs: Double?
    var refDenoiseRuns: [Double] = []
    /// Peak RSS (MB) of that evaluation.
    var refDenoiseRSS: (mb: Double, sinceReset: Bool)?

    public init(options: BenchOptions) { o = options }

    func say(_ s: String) {
        if o.json { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) } else { print(s); fflush(nil) }
    }

    public mutating func runAll() throws {
        FastThreads.setWorkers(o.threads)
        Product.threads = o.threads   // the reference's kernels on as many (the bits do not depend on it)
        let pk = BLASInfo.sgemmPeak(n: 2048, reps: 5)
        peak = pk.gflops
        let mode = ["sequential", "pthreads", "OpenMP"][min(max(BLASInfo.parallelMode, 0), 2)]
        say("oracle bench: SD-DiT-S/2, batch \(batch), mask ratio \(maskRatio); OpenBLAS \(BLASInfo.coreName) (\(mode)), "
            + "\(FastThreads.workers) threads; \(ProcessInfo.processInfo.activeProcessorCount) cpus")
        for line in o.notes { say("note: " + line) }
        say(String(format: "sgemm peak: %.1f GFLOP/s (tiled sgemm 2048x2048x2048 float32, best of 5: %@ ms)",
                   peak, pk.seconds.map { String(format: "%.0f", $0 * 1000) }.joined(separator: ", ")))
        if o.backends.contains("ref") {
            let d = BLASInfo.dgemmPeak(n: 2048, reps: 5)
            dpeak = d.gflops
            say(String(format: "dgemm peak: %.1f GFLOP/s (tiled dgemm 2048x2048x2048 float64, best of 5: %@ ms; the ref rows' yardstick); reference kernels: %@, %d threads",
                       d.gflops, d.seconds.map { String(format: "%.0f", $0 * 1000) }.joined(separator: ", "), Product.isa, Product.threads))
        }
        say("median of \(o.reps) runs after \(o.warmup) warm-up" + (o.backends.contains("ref") && o.cases.contains("sddit-s2-sample40") ? " (ref sddit-s2-sample40: extrapolated from the denoiser)" : ""))
        if o.verbose { printFLOPs() }
        if !o.json {
            say("")
            say(pad("case", 18) + pad("backend", 16) + lpad("median ms", 11) + lpad("min ms", 10) + lpad("GFLOP", 9)
                + lpad("GFLOP/s", 9) + lpad("of peak", 9) + lpad("peak RSS MB", 13) + "  notes")
        }
        for c in o.cases {
            for b in o.backends {
                var r = BenchResult(caseName: c, backend: b)
                let reset = resetPeakRSS()
                rssResetOK = reset
                do { try measure(&r) } catch { r.error = "\(error)" }
                if r.peakRSSMB == nil { r.peakRSSMB = peakRSSMB(); r.rssSinceReset = reset }
                results.append(r)
                report(r)
                if o.profile && c == "sddit-s2-train" && b != "ref" && r.error == nil { try profileTrain(b, measured: r.medianMs ?? 0) }
            }
        }
        let end = BLASInfo.sgemmPeak(n: 2048, reps: 5).gflops
        let drift = end / peak - 1
        say(String(format: "sgemm peak again at the end: %.1f GFLOP/s (%+.0f%%)", end, drift * 100)
            + (abs(drift) > 0.15 ? "; the machine's speed changed during the run (other load on these cores?): treat the times with care" : ""))
        if let p = o.peer { try runPeer(p) }
    }

    // MARK: measuring

    mutating func measure(_ r: inout BenchResult) throws {
        if r.backend == "ref" { return try measureRef(&r) }
        let prec = Backend(rawValue: r.backend)!.fastPrecision!
        let cfg = self.cfg, seed = o.seed
        let sdditParameters = { () -> Parameters<Double> in Initialization.parameters(cfg, mode: .random, seed: seed) }
        var skipped = 0
        func timed(_ body: () throws -> Void) throws {
            for _ in 0..<o.warmup { try body() }
            r.warmup = o.warmup
            for _ in 0..<o.reps {
                let t0 = BLASInfo.now(); try body(); r.runsMs.append((BLASInfo.now() - t0) * 1000)
            }
        }
        switch r.caseName {
        case "sddit-s2-train":
            r.flops = FLOPCount.sdditTrain(cfg, batch: batch, maskRatio: maskRatio).reduce(0) { $0 + $1.total }
            let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: maskRatio, seed: o.seed &+ 2)
            let P = sdditParameters()
            let m = FastModel(cfg, precision: prec, student: P.tensors, teacher: P.subset(cfg.teacherParameters).tensors,
                              centerCls: I.centerCls.data, centerPatch: I.centerPatch.data)
            let fi = FastStepInputs(x0: I.x0.data, labels: I.labels, sigmaS: I.sigmaS, noiseS: I.noiseS.data,
                                    noiseT: I.noiseT.data, mask: I.mask)
            try timed { if try m.trainStep(fi).skipped { skipped += 1 } }
            r.workspaceMB = Double(m.workspaceBytes) / 1_048_576
        case "dit-s2-train":
            r.flops = FLOPCount.ditTrain(cfg, batch: batch).reduce(0) { $0 + $1.total }
            let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: maskRatio, seed: o.seed &+ 2)
            let m = FastModel.plainDiT(cfg, precision: prec, parameters: PlainDiT.randomParameters(cfg, seed: o.seed))
            let di = FastDiTInputs(x0: I.x0.data, labels: I.labels, sigma: I.sigmaS, noise: I.noiseS.data)
            try timed { if try m.ditTrainStep(di).skipped { skipped += 1 } }
            r.workspaceMB = Double(m.workspaceBytes) / 1_048_576
        case "sddit-s2-denoise":
            r.flops = FLOPCount.denoise(cfg, batch: batch).reduce(0) { $0 + $1.total }
            let (x, labels) = denoiseInputs()
            let m = FastModel(cfg, precision: prec, student: sdditParameters().tensors, teacher: nil)
            try timed { _ = try m.denoise(x, sigma: 2.0, labels: labels) }
            r.workspaceMB = Double(m.workspaceBytes) / 1_048_576
        case "sddit-s2-sample40":
            let evals = FLOPCount.heunEvaluations(steps: sampleSteps)
            r.flops = Double(evals) * FLOPCount.denoise(cfg, batch: batch).reduce(0) { $0 + $1.total }
            let (xInit, labels) = sampleInputs()
            let sig = HeunSampler.sigmas(steps: sampleSteps, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
            let m = FastModel(cfg, precision: prec, student: sdditParameters().tensors, teacher: nil)
            try timed { _ = try m.sample(xInit: xInit, labels: labels, sigmas: sig, cfgScale: nil) }
            r.workspaceMB = Double(m.workspaceBytes) / 1_048_576
            r.notes.append("\(evals) denoiser evaluations, no guidance")
        default: break
        }
        if skipped > 0 { r.notes.append("GradScaler skipped AdamW in \(skipped) of \(o.warmup + o.reps) steps (non-finite fp16 gradients)") }
    }

    mutating func measureRef(_ r: inout BenchResult) throws {
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: o.seed)
        let status = o.status
        defer { status(nil) }
        /// --warmup untimed and --reps timed runs of `body`, with a status line on a terminal
        func timed(_ what: String, _ body: () throws -> Void) rethrows -> [Double] {
            var runs: [Double] = [], last: Double?
            let total = o.warmup + o.reps
            for i in 0..<total {
                let phase = i < o.warmup ? "warm-up \(i + 1) of \(o.warmup)" : "run \(i - o.warmup + 1) of \(o.reps)"
                status("ref \(what): \(phase)" + (last.map { String(format: ", about %.0f s left", Double(total - i) * $0 / 1000) } ?? ""))
                let t0 = BLASInfo.now()
                try body()
                let t = (BLASInfo.now() - t0) * 1000
                last = t
                if i >= o.warmup { runs.append(t) }
            }
            return runs
        }
        r.warmup = o.warmup
        switch r.caseName {
        case "sddit-s2-train":
            r.flops = FLOPCount.sdditTrain(cfg, batch: batch, maskRatio: maskRatio).reduce(0) { $0 + $1.total }
            let I: StepInputs<Double> = Initialization.inputs(cfg, batch: batch, maskRatio: maskRatio, seed: o.seed &+ 2)
            let state0 = TrainingState(cfg, student: P, centerCls: I.centerCls, centerPatch: I.centerPatch)
            r.runsMs = try timed("sddit-s2-train") {
                // one training step from the same state each time, the step `oracle diff` runs
                // (ReferenceBackend.stream: the same arithmetic, tensor by tensor): forward with
                // SPEC's activations recorded, backward, AdamW, EMA, centers
                var state = state0
                _ = try state.step(cfg, inputs: I)
            }
        case "dit-s2-train":
            r.notApplicable = true
            r.notes.append("n/a: the reference implements SD-DiT only (no plain DiT)")
        case "sddit-s2-denoise", "sddit-s2-sample40":
            let one = FLOPCount.denoise(cfg, batch: batch).reduce(0) { $0 + $1.total }
            if refDenoiseMs == nil {
                let (x, labels) = denoiseInputs()
                let xt = Tensor(shape: [batch, cfg.inChannels, cfg.inputSize, cfg.inputSize], data: x)
                let runs = timed("denoiser evaluation") {
                    _ = Denoiser.evaluate(cfg, P, x: xt, sigma: Array(repeating: 2.0, count: batch), labels: labels)
                }
                refDenoiseRuns = runs
                var med = BenchResult(caseName: "", backend: ""); med.runsMs = runs
                refDenoiseMs = med.medianMs
                refDenoiseRSS = (peakRSSMB(), rssResetOK)
            }
            if r.caseName == "sddit-s2-denoise" {
                r.flops = one
                r.runsMs = refDenoiseRuns
            } else {
                let evals = FLOPCount.heunEvaluations(steps: sampleSteps)
                r.flops = Double(evals) * one
                r.runsMs = [Double(evals) * refDenoiseMs!]
                r.extrapolated = true
                if let m = refDenoiseRSS { r.peakRSSMB = m.mb; r.rssSinceReset = m.sinceReset }
                r.notes.append("(extrapolated) \(evals) x the median denoiser evaluation (\(String(format: "%.0f", refDenoiseMs!)) ms); the sample was not run")
            }
        default: break
        }
    }

    /// x = 2 N(0, 1) (as the peer's denoiser case), sigma 2, seeded labels.
    func denoiseInputs() -> ([Double], [Int]) {
        var rng = SeededRandom(seed: o.seed &+ 5)
        let x = rng.normals(batch * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: 2)
        return (x, (0..<batch).map { _ in Int(rng.next() % UInt64(cfg.numClasses)) })
    }
    /// x_init = sigma_max N(0, 1), seeded labels.
    func sampleInputs() -> ([Double], [Int]) {
        var rng = SeededRandom(seed: o.seed &+ 3)
        let x = rng.normals(batch * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: cfg.sigmaMax)
        return (x, (0..<batch).map { _ in Int(rng.next() % UInt64(cfg.numClasses)) })
    }

    /// Kernel-by-kernel times of the training step (best of 3 each) x calls per step.
    func profileTrain(_ backend: String, measured: Double) throws {
        let prec = Backend(rawValue: backend)!.fastPrecision!
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: o.seed)
        let m = FastModel(cfg, precision: prec, student: P.tensors, teacher: nil)
        let entries = try m.profileTrainStep(batch: batch, maskRatio: maskRatio, reps: 3)
        say("  profile of \(backend) sddit-s2-train (each piece timed alone, best of 3, x calls per step):")
        var group = ""
        for e in entries {
            if e.group != group { group = e.group; say("    " + group + ":") }
            say("      " + pad(e.name, 58) + String(format: "%9.2f ms x %2d = %8.1f ms", e.ms, e.perStep, e.stepMs))
        }
        let whole = entries.filter { $0.name.hasPrefix("whole") || $0.group == "DINO head" || $0.group == "optimizer" || $0.group == "step loops" }
        let sum = whole.reduce(0) { $0 + $1.stepMs }
        say(String(format: "    blocks (whole) + heads + optimizer + step loops: %.0f ms of the measured %.0f ms median; the rest "
                   + "(%.0f ms): embeddings, decoder_layer / final_layer, copies, center update, and cache effects", sum, measured, measured - sum))
        for (g, label) in [("fwd", "forward kernels"), ("bwd", "backward kernels")] {
            var cats: [String: Double] = [:]
            for e in entries where e.name.hasPrefix(g) {
                let c = e.name.contains("Linear") ? "Linear (sgemm + bias)" : e.name.contains("attention") ? "attention sgemm (per sample, head)"
                    : e.name.contains("softmax") ? "softmax" : e.name.contains("GELU") ? "GELU" : "LN / modulate / gated residual"
                cats[c, default: 0] += e.stepMs
            }
            say("    \(label) by kind, per step: " + cats.sorted { $0.value > $1.value }.map { String(format: "%@ %.0f ms", $0.key, $0.value) }.joined(separator: ", "))
        }
    }

    // MARK: memory

    /// Resets the kernel's RSS high-water mark (Linux >= 4.0); false when refused.
    func resetPeakRSS() -> Bool {
        guard let f = fopen("/proc/self/clear_refs", "w") else { return false }
        let ok = fputs("5", f) >= 0
        return fclose(f) == 0 && ok
    }
    func peakRSSMB() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_maxrss) / 1024   // KiB on Linux
    }

    // MARK: output

    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
    func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s }

    /// The yardstick of a result: dgemm's peak for the float64 reference, sgemm's otherwise.
    func peakFor(_ r: BenchResult) -> Double { r.backend == "ref" ? (dpeak ?? peak) : peak }

    func report(_ r: BenchResult) {
        if o.json {
            var j: [String: Any] = ["kind": "case", "case": r.caseName, "backend": r.backend, "config": "SD-DiT-S/2",
                                    "batch": batch, "threads": o.threads, "sgemm_peak_gflops": round1(peak), "openblas_core": BLASInfo.coreName,
                                    "gflop": round1(r.flops / 1e9), "warmup": r.warmup, "reps": r.runsMs.count,
                                    "runs_ms": r.runsMs.map { round1($0) }, "extrapolated": r.extrapolated,
                                    "peak_rss_since_case_start": r.rssSinceReset]
            j["median_ms"] = r.medianMs.map { round1($0) } ?? NSNull()
            j["gflops"] = r.gflops.map { round1($0) } ?? NSNull()
            j["peak_fraction"] = r.gflops.map { (($0 / peakFor(r)) * 1000).rounded() / 1000 } ?? NSNull()
            if r.backend == "ref", let d = dpeak { j["dgemm_peak_gflops"] = round1(d); j["peak_kind"] = "dgemm" }
            j["peak_rss_mb"] = r.peakRSSMB.map { round1($0) } ?? NSNull()
            if let w = r.workspaceMB { j["workspace_mb"] = round1(w) }
            if r.caseName == "sddit-s2-train" { j["mask_ratio"] = maskRatio }
            if r.notApplicable { j["gflop"] = NSNull() }
            if !r.notes.isEmpty { j["note"] = r.notes.joined(separator: "; ") }
            if r.notApplicable { j["not_applicable"] = true }
            if let e = r.error { j["error"] = e }
            printJSON(j)
            return
        }
        var line = pad(r.caseName, 18) + pad(r.backend, 16)
        if let e = r.error {
            say(line + "error: \(e)"); return
        }
        guard let med = r.medianMs, let gf = r.gflops else {
            say(line + lpad("n/a", 11) + "  " + r.notes.joined(separator: "; ")); return
        }
        line += lpad(String(format: "%.1f", med), 11) + lpad(String(format: "%.1f", r.runsMs.min()!), 10)
        line += lpad(String(format: "%.1f", r.flops / 1e9), 9) + lpad(String(format: "%.1f", gf), 9)
        line += lpad(String(format: "%.3f", gf / peakFor(r)), 9)
        line += lpad(r.peakRSSMB.map { String(format: "%.0f", $0) + (r.rssSinceReset ? "" : "*") } ?? "?", 13)
        var notes = r.notes
        if r.extrapolated && !notes.contains(where: { $0.hasPrefix("(extrapolated)") }) { notes.insert("(extrapolated)", at: 0) }
        if !r.rssSinceReset { notes.append("* process peak so far (RSS high-water reset refused)") }
        say(line + (notes.isEmpty ? "" : "  " + notes.joined(separator: "; ")))
        if o.verbose {
            say("    runs (ms): " + r.runsMs.map { String(format: "%.1f", $0) }.joined(separator: ", ") + "; \(r.warmup) warm-up"
                + (r.workspaceMB.map { String(format: "; fast-path buffers %.0f MB (the rest of the peak RSS: the float64 parameter tables the model is built from, the process)", $0) } ?? ""))
        }
    }

    func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }

    func printJSON(_ j: [String: Any]) {
        let d = try! JSONSerialization.data(withJSONObject: j, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(data: d, encoding: .utf8)!)
        fflush(nil)
    }

    func printFLOPs() {
        let sets: [(String, [FLOPComponent])] = [
            ("sddit-s2-train", FLOPCount.sdditTrain(cfg, batch: batch, maskRatio: maskRatio)),
            ("dit-s2-train", FLOPCount.ditTrain(cfg, batch: batch)),
            ("sddit-s2-denoise", FLOPCount.denoise(cfg, batch: batch)),
        ]
        say("")
        say("FLOPs by component (matrix products, multiply-add = 2; backward = 2x forward except first layers: 1x):")
        for (name, comps) in sets where o.cases.contains(name) || (name == "sddit-s2-denoise" && o.cases.contains("sddit-s2-sample40")) {
            say("  \(name):")
            for c in comps {
                say("    " + pad(c.name, 62) + String(format: "fwd %8.2f  bwd %8.2f  total %8.2f GFLOP", c.forward / 1e9, c.backward / 1e9, c.total / 1e9))
            }
            let f = comps.reduce(0) { $0 + $1.forward }, b = comps.reduce(0) { $0 + $1.backward }
            var tail = ""
            if name == "sddit-s2-train" { tail = String(format: "  (peer README: about 760 GFLOP; here %.0f)", (f + b) / 1e9) }
            say("    " + pad("sum", 62) + String(format: "fwd %8.2f  bwd %8.2f  total %8.2f GFLOP", f / 1e9, b / 1e9, (f + b) / 1e9) + tail)
        }
        if o.cases.contains("sddit-s2-sample40") {
            let one = FLOPCount.denoise(cfg, batch: batch).reduce(0) { $0 + $1.total }
            let n = FLOPCount.heunEvaluations(steps: sampleSteps)
            say(String(format: "  sddit-s2-sample40: %d denoiser evaluations x %.2f = %.1f GFLOP", n, one / 1e9, Double(n) * one / 1e9))
        }
    }

    // MARK: the PyTorch peer

    mutating func runPeer(_ path: String) throws {
        // (peer case, our case, our backend): PyTorch float32 against fast, float64 against ref
        let map = [("i", "sddit-s2-train", "fast"), ("ii", "dit-s2-train", "fast"), ("iii", "sddit-s2-denoise", "fast"),
                   ("iv", "sddit-s2-train", "ref")]
        let wanted = map.filter { o.cases.contains($0.1) && o.backends.contains($0.2) }
        guard !wanted.isEmpty else {
            say("peer: no selected case and backend has a peer counterpart (i: sddit-s2-train, ii: dit-s2-train, iii: sddit-s2-denoise on fast; iv: sddit-s2-train on ref); not run")
            return
        }
        let args = [path, "--cases", wanted.map { $0.0 }.joined(separator: ","), "--alloc", o.peerAlloc,
                    "--reps", "\(o.reps)", "--warmup", "\(o.warmup)"]
        say("")
        if o.threads != 2 { say("note: the fast path ran with \(o.threads) threads; the peer always uses 2 (torch.set_num_threads(2))") }
        say("peer: \(o.python) " + args.joined(separator: " "))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [o.python] + args
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        var medians: [String: Double] = [:]   // "case/alloc" -> median ms
        var buffer = Data()
        let h = pipe.fileHandleForReading
        func consume(_ line: String) {
            say("peer| " + line)
            if let (c, alloc, ms) = parsePeerLine(line) { medians[c + "/" + alloc] = ms }
        }
        while true {
            let d = h.availableData
            if d.isEmpty { break }
            buffer.append(d)
            while let nl = buffer.firstIndex(of: 10) {
                consume(String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...nl)
            }
        }
        if !buffer.isEmpty { consume(String(decoding: buffer, as: UTF8.self)) }
        p.waitUntilExit()
        if p.terminationStatus != 0 { say("peer: exited with status \(p.terminationStatus)") }
        say("")
        // glibc malloc as it is, and told to keep freed memory (the peer's ALLOC_ENV: what a user
        // who cares about speed runs); the tuned allocator is the comparison that counts
        let allocs = o.peerAlloc == "both" ? ["tuned", "default"] : [o.peerAlloc]
        say("ours / peer (PyTorch, 2 threads; float32 against fast, float64 against ref), medians; below 1: ours is faster"
            + (allocs.count > 1 ? "; the tuned allocator's ratio is the one that counts:" : ":"))
        for (pc, c, backend) in wanted {
            for alloc in allocs {
                let fast = results.first { $0.caseName == c && $0.backend == backend }?.medianMs
                let pm = medians[pc + "/" + alloc]
                let ratio: Double? = (fast != nil && pm != nil) ? fast! / pm! : nil
                if o.json {
                    printJSON(["kind": "peer", "case": c, "peer_case": pc, "backend": backend, "peer_alloc": alloc,
                               "median_ms": fast.map { round1($0) } ?? NSNull(), "peer_median_ms": pm ?? NSNull(),
                               (backend == "ref" ? "ratio_ref_over_peer" : "ratio_fast_over_peer"): ratio.map { ($0 * 1000).rounded() / 1000 } ?? NSNull()])
                }
                let fs = fast.map { String(format: "%.0f ms", $0) } ?? "not run"
                let ps = pm.map { String(format: "%.0f ms", $0) } ?? "no result"
                let rs = ratio.map { String(format: "%.2f", $0) } ?? "n/a"
                say("  " + pad(c, 18) + "\(backend) \(fs)  peer (\(pc), \(pad(alloc + " malloc)", 15)) \(ps)  \(backend)/peer = \(rs)")
            }
        }
    }

    /// "(i)   SD-DiT-S/2 train step ... [tuned malloc]: median 9000 ms, runs [...]" -> ("i", "tuned", 9000)
    public static func parsePeerLine(_ line: String) -> (String, String, Double)? {
        guard line.hasPrefix("("), let close = line.firstIndex(of: ")") else { return nil }
        let tag = String(line[line.index(after: line.startIndex)..<close])
        guard ["i", "ii", "iii", "iv"].contains(tag), let m = line.range(of: "median "),
              let a = line.range(of: " malloc]: "), let open = line[..<a.lowerBound].lastIndex(of: "[") else { return nil }
        let alloc = String(line[line.index(after: open)..<a.lowerBound])
        let rest = line[m.upperBound...]
        guard let end = rest.range(of: " ms"), let v = Double(rest[rest.startIndex..<end.lowerBound]) else { return nil }
        return (tag, alloc, v)
    }
    func parsePeerLine(_ line: String) -> (String, String, Double)? { Self.parsePeerLine(line) }
}
