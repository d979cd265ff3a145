import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTExchange

// The `oracle` executable as a user runs it: exit codes, the summary line, one-line errors.
@Suite("oracle command line")
struct CLITests {
    /// Whether script(1) can run a command with stderr on a pseudo-terminal here (a container
    /// without /dev/ptmx cannot).
    static func scriptGivesATerminal() -> Bool {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else { return false }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        p.arguments = ["-qec", "test -t 2", "/dev/null"]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice; p.standardInput = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    /// The reference's progress line: on a terminal (script(1) gives the command one) it names
    /// the block and pass and reaches 100% of the work it announced (training step, sampler
    /// with guidance); without a terminal stderr stays empty.
    @Test(.enabled(if: Self.scriptGivesATerminal()))
    func referenceProgressOnATerminalOnly() throws {
        let out = tempDir().appendingPathComponent("p.h5").path
        let cmd = [oracleBinary().path, "dump", "--backend", "ref", "--config", "tiny", "--sample", "3", "--cfg-scale", "1.5", "--out", out]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        p.arguments = ["-qc", cmd.joined(separator: " "), "/dev/null"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let tty = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let updates = tty.split(separator: "\r").filter { $0.hasPrefix("ref: ") }
        #expect(updates.contains { $0.contains("student.enc block 1/2 backward") }, "no progress line for the student's encoder backward:\n\(tty)")
        #expect(updates.contains { $0.contains("teacher.enc block 2/2 forward") }, "no progress line for the teacher's last encoder block:\n\(tty)")
        #expect(updates.last.map { $0.contains(", 100%") } == true, "last update: \(updates.last ?? "none")")
        let (code, _, err) = try runOracle(Array(cmd.dropFirst()))
        #expect(code == 0 && err.isEmpty, "stderr without a terminal: \(err)")
    }

    @Test func helpListsCommands() throws {
        let (code, out, _) = try runOracle(["--help"])
        #expect(code == 0, "oracle --help exited \(code)")
        for cmd in ["diff", "dump", "info"] { #expect(out.contains(cmd), "--help does not mention \(cmd):\n\(out)") }
        let (c2, diffHelp, _) = try runOracle(["diff", "--help"])
        #expect(c2 == 0, "oracle diff --help exited \(c2)")
        #expect(diffHelp.contains("compared N, failed M, only-in-a X, only-in-b Y"), "diff --help lacks the summary format")
        #expect(diffHelp.contains("|a - e| <= atol + rtol*|e|"), "diff --help lacks the pass rule")
        // an option's values, listed by ArgumentParser from the type it parses
        let (c3, dumpHelp, _) = try runOracle(["dump", "--help"])
        #expect(c3 == 0 && dumpHelp.contains("fast-tf32-conv") && dumpHelp.contains("(default: ref)"), "dump --help lacks the backends:\n\(dumpHelp)")
        let (c4, precisionHelp, _) = try runOracle(["precision", "--help"])
        #expect(c4 == 0 && precisionHelp.contains("fast-bf16-pure") && precisionHelp.contains("(values: fp16, bf16; default: fp16)"),
                "precision --help lacks the modes or half types:\n\(precisionHelp)")
    }

    @Test(arguments: pytorchFixtures + ["golden_tiny.h5", "golden_tiny_ditinit.h5"])
    func fixtureAgainstRefExitsZero(_ name: String) throws {
        let (code, out, err) = try runOracle(["diff", "--a", fixture(name), "--b", "ref"])
        let last = out.split(separator: "\n").last.map(String.init) ?? ""
        #expect(code == 0, "\(name): exit \(code)\n\(out)\(err)")
        #expect(last.hasPrefix("compared ") && last.contains(", failed 0, only-in-a 0, only-in-b 0"), "\(name): last line '\(last)'")
    }

    @Test func fileAgainstItselfAndPerturbed() throws {
        let f = fixture("golden_tiny.h5")
        let (c0, out0, _) = try runOracle(["diff", "--a", f, "--b", f])
        #expect(c0 == 0, "a file against itself: \(out0)")
        #expect(out0.contains("compared 3"), "a file against itself compares every dataset: \(out0.suffix(80))")
        // perturb one gradient entry by 1e-6 relative
        let dir = tempDir()
        let src = try ExchangeFile.read(f)
        var ds = src.datasets, ints: [String: ([Int64], [Int])] = [:]
        for (k, v) in src.integers { ints[k] = (v, src.datasets[k]!.shape); ds[k] = nil }
        ds["grads/blocks.1.mlp.fc1.weight"]!.values[17] *= 1 + 1e-6
        let p = dir.appendingPathComponent("p.h5").path
        try ExchangeWriter.write(p, config: src.config, datasets: ds, integers: ints, cfgScale: src.cfgScale)
        let (c1, out1, _) = try runOracle(["diff", "--a", p, "--b", "ref"])
        #expect(c1 == 1, "perturbed file: exit \(c1)")
        #expect(out1.contains("FAIL grads/blocks.1.mlp.fc1.weight"), "perturbed tensor not named:\n\(out1)")
        #expect(out1.contains("failed 1,"), "summary: \(out1.suffix(100))")
        // --json is machine-readable and agrees
        let (_, js, _) = try runOracle(["diff", "--a", p, "--b", "ref", "--json"])
        let o = try JSONSerialization.jsonObject(with: Data(js.utf8)) as? [String: Any]
        #expect(o?["failed"] as? Int == 1, "json failed count: \(String(describing: o?["failed"]))")
    }

    @Test func backendsAgainstEachOther() throws {
        let (code, out, err) = try runOracle(["diff", "--a", "ref80", "--b", "ref", "--config", "tiny", "--seed", "4"])
        #expect(code == 0, "ref80 vs ref: \(out)\(err)")
        #expect(out.contains("only-in-a 0, only-in-b 0"), "ref80 vs ref: a dataset is on one side only:\n\(out)")
    }

    @Test(arguments: [
        (["diff", "--a", "/nonexistent/x.h5", "--b", "ref"], "x.h5"),
        (["diff", "--a", "ref", "--b", "ref", "--config", "Q/9"], "unknown config"),
        (["diff", "--a", "ref", "--b", "ref", "--mask-ratio", "1.5"], "mask-ratio"),
        (["info", "/nonexistent/y.h5"], "y.h5"),
        (["dump", "--backend", "nope", "--out", "/tmp/z.h5"], "'nope' is invalid for '--backend <backend>'. Please provide one of: ref, ref80"),
        (["dump", "--out", "/nonexistent-dir/z.h5"], "z.h5"),
        (["precision", "--half", "fp32"], "'fp32' is invalid for '--half <half>'"),
        (["precision", "--mode", "fast-tf32-conv"], "'fast-tf32-conv' is invalid for '--mode <mode>'"),
    ])
    func badInputGivesOneLine(_ args: [String], _ mentions: String) throws {
        try expectOneLineError(args, mentions: mentions)
    }

    @Test func notAnHDF5File() throws {
        let dir = tempDir()
        let p = dir.appendingPathComponent("text.h5")
        try "hello".write(to: p, atomically: true, encoding: .utf8)
        let (code, _, err) = try runOracle(["diff", "--a", p.path, "--b", "ref"])
        #expect(code == 2, "exit \(code)")
        #expect(err.contains("text.h5") && err.split(separator: "\n").count == 1, "error: \(err)")
    }

    @Test func dumpReadsBackAndPasses() throws {
        let dir = tempDir()
        let p = dir.appendingPathComponent("d.h5").path
        let (c, out, err) = try runOracle(["dump", "--backend", "ref", "--config", "tiny", "--seed", "9", "--mask-ratio", "0.5",
                                           "--batch", "3", "--sample", "3", "--out", p])
        #expect(c == 0, "dump: \(out)\(err)")
        let f = try ExchangeFile.read(p)
        #expect(f.datasets["activations/student.enc.block.1"]?.shape == [3, 9, 32], "student.enc.block.1 of the dump has shape \(String(describing: f.datasets["activations/student.enc.block.1"]?.shape))")
        let (c2, out2, _) = try runOracle(["diff", "--a", p, "--b", "ref"])
        #expect(c2 == 0, "dumped file vs ref:\n\(out2)")
        // h5py reads the same values back, when Python with h5py is here.
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        py.arguments = ["python3", "-c", """
            import h5py, json, sys
            f = h5py.File(sys.argv[1], 'r')
            assert f.attrs['format'] == 'sddit-oracle/1'
            print(json.loads(f.attrs['config'])['hidden_size'], repr(float(f['losses/total'][()])), f['inputs/mask'][()].sum())
            """, p]
        let pipe = Pipe(); py.standardOutput = pipe; py.standardError = Pipe()
        try py.run(); py.waitUntilExit()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard py.terminationStatus == 0 else { print("h5py read-back skipped (python3 with h5py not available)"); return }
        let parts = text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(parts.first == "32", "h5py config hidden_size: \(text)")
        #expect(Double(parts[1]) == f.datasets["losses/total"]!.values[0], "h5py total loss \(parts[1]) vs \(f.datasets["losses/total"]!.values[0])")
        #expect(Int(parts[2]) == 3 * 8, "h5py mask sum \(parts[2]), expected 3 samples x 8 hidden tokens")
    }
}

/// `oracle diff --explain` on the command line: a planted file's cause printed and in the
/// JSON; a clean file gets none; --plant joins divergences with + and refuses unknown ones.
@Suite("oracle diff --explain (CLI)")
struct ExplainCLITests {
    @Test func explainNamesAPlantedBug() throws {
        let dir = tempDir()
        let bug = dir.appendingPathComponent("explain-cli-bug.h5").path, clean = dir.appendingPathComponent("explain-cli-clean.h5").path
        for (plant, out) in [("c-noise-ln+ema-reversed", bug), (nil, clean)] as [(String?, String)] {
            let (rc, _, err) = try runOracle(["dump", "--backend", "fast", "--config", "tiny", "--seed", "2", "--sample", "0", "--out", out]
                                             + (plant.map { ["--plant", $0] } ?? []))
            try #require(rc == 0, "oracle dump \(plant ?? "clean") exited \(rc): \(err)")
        }
        let (rc, out, _) = try runOracle(["diff", "--a", bug, "--b", "ref", "--explain"])
        #expect(rc == 1, "a planted bug must fail (exit \(rc))")
        let line = out.split(separator: "\n").first { $0.hasPrefix("explained by: ") }
        #expect(line?.contains("c_noise = ln(sigma)") == true && line?.contains("EMA reversed") == true, "no explanation naming both: \(out.suffix(3000))")
        let (_, js, _) = try runOracle(["diff", "--a", bug, "--b", "ref", "--explain", "--json"])
        let j = try #require(try JSONSerialization.jsonObject(with: Data(js.utf8)) as? [String: Any], "--json printed no object")
        let ex = try #require(j["explanations"] as? [[String: Any]], "no explanations array")
        #expect(ex.first?["kind"] as? String == "explained" && (ex.first?["divergences"] as? [String]).map(Set.init) == ["c-noise-ln", "ema-reversed"],
                "first explanation: \(String(describing: ex.first))")
        let (rcClean, outClean, _) = try runOracle(["diff", "--a", clean, "--b", "ref", "--explain"])
        #expect(rcClean == 0 && !outClean.contains("explained"), "a clean file is explained or fails (exit \(rcClean)): \(outClean.suffix(500))")
        let (rcBad, _, errBad) = try runOracle(["dump", "--backend", "fast", "--config", "tiny", "--plant", "gelu-exact:0+nonsense", "--out", dir.appendingPathComponent("x.h5").path])
        let first = errBad.split(separator: "\n").first ?? ""
        #expect(rcBad != 0 && first.contains("--plant nonsense: unknown") && !errBad.contains("Backtrace"), "an unknown divergence: exit \(rcBad), \(errBad)")
    }
}
