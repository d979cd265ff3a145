import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTReference

// Bad input, faults and honesty: every mutated file ends in one clean error line or a
// correct verdict; nothing traps.
@Suite("Robustness")
struct RobustnessTests {
    static let source = fixture("public_train_tiny.h5")

    /// The outcome of `oracle diff --a FILE --b ref` run in-process.
    enum Outcome { case error(String), report(DiffReport) }

    static func diff(_ path: String) -> Outcome {
        do { return .report(try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())) } catch {
            return .error("\(error)")
        }
    }

    static func mutable(_ f: ExchangeFile) -> FuzzCorpus.Mutable {
        var ds = f.datasets, ints: [String: ([Int64], [Int])] = [:]
        for (k, v) in f.integers { ints[k] = (v, f.datasets[k]!.shape); ds[k] = nil }
        return FuzzCorpus.Mutable(config: f.config, configJSON: f.configJSON, datasets: ds, integers: ints, cfgScale: f.cfgScale)
    }

    static func isResult(_ p: String) -> Bool { !ExchangeFile.isSetup(p) && !p.hasPrefix("params/") }

    @Test func byteLevelFuzz() throws {
        let dir = tempDir()
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.source))
        let orig = try ExchangeFile.read(Self.source)
        var counts: [String: Int] = [:]
        for c in FuzzCorpus.byteMutations(of: data, seed: 77) {
            let p = dir.appendingPathComponent("case.h5").path
            try c.bytes!.write(to: URL(fileURLWithPath: p))
            let kind = String(c.name.split(separator: "#")[0]).trimmingCharacters(in: .whitespaces)
            switch Self.diff(p) {
            case .error(let e):
                counts[kind + ": clean error", default: 0] += 1
                #expect(e.contains(p) && !e.contains("\n"), "\(c.name): error must be one line naming the file: \(e)")
            case .report(let r):
                let m = try ExchangeFile.read(p)
                let setupSame = orig.datasets.keys.filter { !Self.isResult($0) }.allSatisfy { m.datasets[$0]?.values == orig.datasets[$0]!.values }
                    && m.integers == orig.integers && m.configJSON == orig.configJSON
                let changed = orig.datasets.keys.filter(Self.isResult).filter { k in
                    guard let v = m.datasets[k] else { return true }
                    return zip(v.values, orig.datasets[k]!.values).contains { !$0.0.isFinite || abs($0.0 - $0.1) > 1e-6 * (abs($0.1) + 1e-3) }
                }
                if setupSame && m.datasets.count == orig.datasets.count && changed.isEmpty {
                    counts[kind + ": data intact, passed", default: 0] += r.passed ? 1 : 0
                    let passed = r.passed
                    #expect(passed, "\(c.name): the file's data are intact (to 1e-6) but diff failed: \(r.summary)")
                } else if setupSame && !changed.isEmpty {
                    counts[kind + ": results corrupted, failed", default: 0] += 1
                    let failing = Set(r.comparisons.filter { !$0.passed }.map(\.name) + r.onlyInA + r.onlyInB)
                    let passed = r.passed
                    #expect(!passed && changed.allSatisfy(failing.contains), "\(c.name): corrupted \(changed) but failing only \(failing.sorted())")
                } else {
                    counts[kind + ": setup corrupted, verdict \(r.passed ? "pass" : "fail")", default: 0] += 1
                }
            }
        }
        Report.add("robustness.txt", ["byte-level fuzz of public_train_tiny.h5 (\(FuzzCorpus.byteCases) cases)"]
                   + counts.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)" })
    }

    @Test func structuralMutationsNeverPass() throws {
        let dir = tempDir()
        let orig = try ExchangeFile.read(Self.source)
        var lines = ["structural mutations of public_train_tiny.h5"]
        for c in FuzzCorpus.structuralMutations() {
            var m = Self.mutable(orig)
            c.structured!(&m)
            let p = dir.appendingPathComponent("s.h5").path
            try ExchangeWriter.write(p, config: m.config, datasets: m.datasets, integers: m.integers,
                                     cfgScale: m.cfgScale, rawConfigJSON: m.configJSON)
            switch Self.diff(p) {
            case .error(let e):
                #expect(e.contains(p) && !e.contains("\n"), "\(c.name): error must be one line naming the file: \(e)")
                lines.append("  \(c.name): error: \(e.replacingOccurrences(of: p, with: "FILE"))")
            case .report(let r):
                let passed = r.passed
                #expect(!passed, "\(c.name): diff passed a corrupted file: \(r.summary)")
                let first = r.comparisons.first { !$0.passed }?.name ?? (r.onlyInA + r.onlyInB).first ?? "-"
                lines.append("  \(c.name): diff fails (\(r.summary)); first: \(first)")
            }
        }
        Report.add("robustness.txt", lines)
    }

    /// One byte (offset 837 := 122, found by the fuzzer) makes libhdf5 1.10 dereference a bad
    /// pointer: the isolated h5probe process takes the crash, the caller gets one error line.
    @Test func libraryCrashIsContained() throws {
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.source)))
        b[837] = 122
        let p = tempDir().appendingPathComponent("crash.h5").path
        try Data(b).write(to: URL(fileURLWithPath: p))
        guard case .error(let e) = Self.diff(p) else { Issue.record("a file that crashes libhdf5 was read"); return }
        #expect(e.contains("crashed the HDF5 library") && e.contains(p), "the contained libhdf5 crash is not one error naming the file: \(e)")
        let (code, _, err) = try runOracle(["diff", "--a", p, "--b", "ref"])
        #expect(code == 2 && err.split(separator: "\n").count == 1, "exit \(code): \(err)")
    }

    /// A few mutated files through the real executable: exit 1 or 2, one line on stderr, no signal.
    @Test func executableNeverCrashes() throws {
        let dir = tempDir()
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.source))
        for c in FuzzCorpus.byteMutations(of: data, seed: 5).prefix(12) {
            let p = dir.appendingPathComponent("x.h5").path
            try c.bytes!.write(to: URL(fileURLWithPath: p))
            let (code, _, err) = try runOracle(["diff", "--a", p, "--b", "ref"])
            #expect([0, 1, 2].contains(code), "\(c.name): exit \(code) (a signal?) stderr \(err)")
            #expect(err.split(separator: "\n").count <= 1, "\(c.name): stderr is not one line: \(err)")
        }
    }

    @Test func honesty() throws {
        let dir = tempDir()
        let orig = try ExchangeFile.read(Self.source)
        // nothing in common: two files whose datasets are disjoint
        let a = dir.appendingPathComponent("a.h5").path, b = dir.appendingPathComponent("b.h5").path
        try ExchangeWriter.write(a, config: orig.config, datasets: ["losses/total": orig.datasets["losses/total"]!])
        try ExchangeWriter.write(b, config: orig.config, datasets: ["losses/generative": orig.datasets["losses/generative"]!])
        let r0 = try DiffEngine.run(a: .file(a), b: .file(b), options: DiffOptions())
        let (none, p0) = (r0.comparisons.isEmpty, r0.passed)
        #expect(none && !p0, "nothing compared must not pass: \(r0.summary)")
        var allow = DiffOptions(); allow.allowMissing = true
        #expect(!(try DiffEngine.run(a: .file(a), b: .file(b), options: allow)).passed, "nothing compared fails even with --allow-missing")
        // shapes differ
        var t = orig.datasets["losses/total"]!; t.shape = [1]
        try ExchangeWriter.write(b, config: orig.config, datasets: ["losses/total": t])
        let r1 = try DiffEngine.run(a: .file(a), b: .file(b), options: DiffOptions())
        let mismatch = r1.comparisons.first?.shapeMismatch ?? false
        #expect(r1.failed == 1 && mismatch, "a shape mismatch must fail: \(r1.summary)")
        // missing on one side: fails unless --allow-missing
        try ExchangeWriter.write(b, config: orig.config, datasets: ["losses/total": orig.datasets["losses/total"]!,
                                                                    "losses/generative": orig.datasets["losses/generative"]!])
        let r2 = try DiffEngine.run(a: .file(a), b: .file(b), options: DiffOptions())
        let p2 = r2.passed
        #expect(r2.failed == 0 && r2.onlyInB == ["losses/generative"] && !p2, "missing must fail: \(r2.summary)")
        #expect(try DiffEngine.run(a: .file(a), b: .file(b), options: allow).passed, "--allow-missing accepts it")
        let (code, out, _) = try runOracle(["diff", "--a", a, "--b", b])
        #expect(code == 1 && out.hasSuffix("compared 1, failed 0, only-in-a 0, only-in-b 1\n"), "exit \(code): \(out)")
    }

    @Test func absurdConfigRefusedBeforeAllocating() throws {
        let (code, _, err) = try runOracle(["diff", "--a", "ref", "--b", "ref", "--config", "XL/2", "--batch", "64"])
        #expect(code != 0 && err.contains("GiB") && err.contains("refusing before allocating"), "exit \(code): \(err)")
    }

    /// `oracle dump` killed at random moments: the target is always the old file or a
    /// complete new one, never a half file.
    @Test func killMidWrite() throws {
        let dir = tempDir()
        let target = dir.appendingPathComponent("out.h5").path
        try FileManager.default.copyItem(atPath: fixture("golden_tiny.h5"), toPath: target)
        let old = try Data(contentsOf: URL(fileURLWithPath: target))
        let args = ["dump", "--backend", "fast", "--config", "tiny", "--batch", "48", "--sample", "0"]
        let complete = dir.appendingPathComponent("complete.h5").path
        let (c0, _, e0) = try runOracle(args + ["--seed", "0", "--out", complete])
        #expect(c0 == 0, "uninterrupted dump failed: \(e0)")
        let expected = try ExchangeFile.read(complete).datasets.count
        // each kill leaves the file as it was before that run, or a complete new file
        var previous = old, oldSeen = 0, newSeen = 0, killed = 0
        for i in 0..<12 {
            let p = Process()
            p.executableURL = oracleBinary()
            p.arguments = args + ["--seed", "\(i % 2)", "--out", target]
            p.standardOutput = Pipe(); p.standardError = Pipe()
            try p.run()
            usleep(useconds_t(20_000 + (i * 37_000) % 400_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if p.terminationReason == .uncaughtSignal { killed += 1 }
            let now = try Data(contentsOf: URL(fileURLWithPath: target))
            if now == previous { oldSeen += 1; continue }
            let f = try ExchangeFile.read(target)   // must be complete
            #expect(f.datasets.count == expected, "kill #\(i): half-written file with \(f.datasets.count) of \(expected) datasets")
            newSeen += 1
            previous = now
        }
        // the test means something only if some runs were really killed before they finished
        #expect(killed > 0, "no run was killed mid-way: every dump finished within its delay")
        Report.add("robustness.txt", ["kill -9 during oracle dump: 12 runs, \(killed) killed, previous file intact \(oldSeen), complete new file \(newSeen), half files 0"])
    }

    /// The reference: bit-identical results run to run and whatever OpenBLAS's thread count
    /// (it calls no BLAS; its own kernels split work over the cores by a fixed partition, so
    /// their thread count changes no bit either: `KernelTests`).
    @Test func referenceDeterminism() throws {
        let s = SeededSetup.make(.tiny, seed: 12, batch: 2, maskRatio: 0.5, sampleSteps: 3)
        let a = try Backend.ref.run(s), b = try Backend.ref.run(s)
        for (k, v) in a { #expect(v.values == b[k]!.values, "\(k) differs between two reference runs") }
        let dir = tempDir()
        var files: [String] = []
        for threads in ["1", "2"] {
            let out = dir.appendingPathComponent("ref\(threads).h5").path
            _ = try runOracle(["dump", "--backend", "ref", "--config", "tiny", "--seed", "4", "--sample", "3", "--out", out],
                              env: ["OPENBLAS_NUM_THREADS": threads])
            files.append(out)
        }
        let f1 = try ExchangeFile.read(files[0]), f2 = try ExchangeFile.read(files[1])
        for (k, v) in f1.datasets { #expect(v.values == f2.datasets[k]?.values, "\(k) differs between 1 and 2 threads") }
    }

    /// The fast path with 1 and with 2 threads (OPENBLAS_NUM_THREADS sets the fast path's own
    /// worker count; OpenBLAS itself always runs single-threaded): bit-identical, every dataset
    /// (README "Determinism").
    @Test func fastAcrossThreadCounts() throws {
        let dir = tempDir()
        var files: [String] = []
        for threads in ["1", "2"] {
            let out = dir.appendingPathComponent("fast\(threads).h5").path
            let (status, _, _) = try runOracle(["dump", "--backend", "fast", "--config", "tiny", "--seed", "6", "--batch", "4", "--sample", "3", "--out", out],
                                               env: ["OPENBLAS_NUM_THREADS": threads])
            #expect(status == 0, "oracle dump --backend fast at \(threads) threads exited \(status)")
            files.append(out)
        }
        let f1 = try ExchangeFile.read(files[0]), f2 = try ExchangeFile.read(files[1])
        let differing = f1.datasets.keys.filter { f1.datasets[$0]!.values.map(\.bitPattern) != f2.datasets[$0]?.values.map(\.bitPattern) }.sorted()
        #expect(f1.datasets.count > 100 && f1.datasets.count == f2.datasets.count, "1 vs 2 threads: \(f1.datasets.count) and \(f2.datasets.count) datasets (expected the same, over 100)")
        #expect(differing.isEmpty, "1 vs 2 threads: \(differing.count) datasets differ: \(differing.prefix(4))")
        Report.add("robustness.txt", ["fast path, 1 vs 2 threads: \(f1.datasets.count - differing.count) of \(f1.datasets.count) datasets bit-identical"])
    }
}
