import Foundation
import Testing
import SDDiTCore
import SDDiTExchange
import SDDiTReference

// The Python tooling (tools/sddit_h5.py) against this package: its own tests, a file it
// writes read back by the Swift reader, and a file `oracle dump` writes checked by it.
// Where python3 with numpy and h5py is not importable these tests show as skipped (with why),
// never as passed.
/// True when python3 can import numpy and h5py (asked once).
let pythonWithH5py: Bool = {
    guard let (rc, _) = ToolsTests.python(["-c", "import numpy, h5py"]) else { return false }
    return rc == 0
}()

@Suite("Python tools", .enabled(if: pythonWithH5py, "python3 with numpy and h5py is not importable (pip install numpy h5py)"))
struct ToolsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var tools: URL { root.appendingPathComponent("tools") }

    /// Runs `python3 args...` in the repository root; (exit status, stdout + stderr), or nil
    /// when python3 cannot be started.
    static func python(_ args: [String]) -> (Int32, String)? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3"] + args
        p.currentDirectoryURL = root
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        do { try p.run() } catch { return nil }
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }


    @Test func pythonToolSuitePasses() throws {
        let r = try #require(Self.python([Self.tools.appendingPathComponent("test_sddit_h5.py").path]))
        #expect(r.0 == 0, "python3 tools/test_sddit_h5.py exited \(r.0):\n\(r.1)")
        #expect(r.1.contains(" passed, 0 failed"), "no clean summary line:\n\(r.1)")
    }

    /// A tiny exchange file written by sddit_h5.write_exchange (random parameters, inputs,
    /// float32 activations) is read by the Swift reader with the right config, types and setup.
    @Test func fileWrittenByPythonReadsInSwift() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tools-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("py.h5").path
        let script = """
        import sys, numpy as np
        sys.path.insert(0, sys.argv[1])
        import sddit_h5 as sx
        cfg = sx.preset("tiny"); rng = np.random.default_rng(0)
        P = {k: 0.05 * rng.standard_normal(s) for k, s in sx.param_shapes(cfg, "student").items()}
        P["head.last_layer.weight_g"] = np.ones((64, 1))
        T = {k: P[k].copy() for k in sx.param_shapes(cfg, "teacher")}
        mask = np.zeros((2, 16), dtype=np.uint8); mask[0, [1, 5, 9, 13]] = 1; mask[1, [0, 2, 4, 6]] = 1
        I = {"x0": rng.standard_normal((2, 4, 8, 8)), "labels": np.array([1, 10]),
             "sigma_s": np.array([0.5, 2.0]), "noise_s": rng.standard_normal((2, 4, 8, 8)),
             "noise_t": rng.standard_normal((2, 4, 8, 8)), "mask": mask,
             "center_cls": np.zeros(64), "center_patch": np.zeros(64), "step": 3}
        A = {"student.c": rng.standard_normal((2, 32)).astype(np.float32)}
        sx.write_exchange(sys.argv[2], cfg, P, teacher=T, inputs=I, activations=A, losses={"total": 1.25})
        """
        let r = try #require(Self.python(["-c", script, Self.tools.path, out]))
        try #require(r.0 == 0, "writing with sddit_h5.py failed (\(r.0)):\n\(r.1)")

        let f = try ExchangeFile.read(out)
        #expect(f.config.hiddenSize == 32 && f.config.headOutDim == 64 && f.config.numClasses == 10)
        #expect(f.integers["inputs/labels"] == [1, 10])
        #expect(f.integers["inputs/step"] == [3])
        #expect(f.integers["inputs/mask"]?.reduce(0, +) == 8)
        #expect(f.datasets["params/cls_token"]?.shape == [1, 1, 32])
        #expect(f.datasets["params/cls_token"]?.precision == .float64)
        #expect(f.datasets["activations/student.c"]?.precision == .float32)
        #expect(f.datasets["losses/total"]?.values == [1.25])
        let setup = try f.runSetup()
        #expect(setup.teacher != nil)
        #expect(setup.inputs != nil)
    }

    /// A file written by `oracle dump` passes `sddit_h5.py check`.
    @Test func oracleDumpPassesPythonCheck() throws {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var oracle: URL? = nil
        for _ in 0..<4 {
            let c = dir.appendingPathComponent("oracle")
            if FileManager.default.isExecutableFile(atPath: c.path) { oracle = c; break }
            dir = dir.deletingLastPathComponent()
        }
        let found = try #require(oracle, "the oracle executable was not found near the test bundle")
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("tools-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let out = tmp.appendingPathComponent("dump.h5").path
        let p = Process()
        p.executableURL = found
        p.arguments = ["dump", "--backend", "ref", "--config", "tiny", "--out", out, "--sample", "3"]
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        try p.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "oracle dump failed:\n\(text)")
        let r = try #require(Self.python([Self.tools.appendingPathComponent("sddit_h5.py").path, "check", out]))
        #expect(r.0 == 0, "sddit_h5.py check rejects oracle's own dump:\n\(r.1)")
    }
}
