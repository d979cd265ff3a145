import Foundation
import Testing
import SDDiTCore
import SDDiTExchange
import SDDiTReference

/// The repository root (tests read fixtures/ and write test-reports/ there).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

func fixture(_ name: String) -> String { repoRoot.appendingPathComponent("fixtures/\(name)").path }

/// The PyTorch fixtures (../shared/fixtures, copied): every one must be reproduced.
let pytorchFixtures = ["public_train_tiny.h5", "public_infer_tiny.h5", "public_odd_shapes.h5",
                       "public_sampler_tiny.h5", "public_sampler_cfg_tiny.h5"]

func tempDir() -> URL {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("oracle-tests-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    return d
}

/// The built `oracle` executable, next to the test bundle.
func oracleBinary() -> URL {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let c = dir.appendingPathComponent("oracle")
        if FileManager.default.isExecutableFile(atPath: c.path) { return c }
        dir = dir.deletingLastPathComponent()
    }
    return Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("oracle")
}

/// Runs `oracle args...` in the repository root, with extra environment variables; returns
/// (exit status, stdout, stderr).
func runOracle(_ args: [String], env: [String: String] = [:]) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = oracleBinary()
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
    p.currentDirectoryURL = repoRoot
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    // read stderr on another thread so neither pipe can fill up and block the child
    let errData = UncheckedBox<Data>(Data())
    let t = Thread { errData.value = err.fileHandleForReading.readDataToEndOfFile() }
    t.start()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    while !t.isFinished { usleep(1000) }
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: errData.value, as: UTF8.self))
}

final class UncheckedBox<T>: @unchecked Sendable { var value: T; init(_ v: T) { value = v } }

/// Bad input: a non-zero exit, one error line on stderr (argument-parser's usage lines aside)
/// that mentions `mentions`, and no crash.
func expectOneLineError(_ args: [String], mentions: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (code, _, err) = try runOracle(args)
    #expect(code != 0, "\(args) exited 0", sourceLocation: sourceLocation)
    let lines = err.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.hasPrefix("  See") }
    #expect(lines.count == 1, "\(args): expected one error line, got:\n\(err)", sourceLocation: sourceLocation)
    #expect(err.contains(mentions), "\(args): error does not mention '\(mentions)': \(err)", sourceLocation: sourceLocation)
    #expect(!err.contains("Fatal error") && !err.contains("Stack dump"), "\(args) crashed: \(err)", sourceLocation: sourceLocation)
}

func writeReport(_ name: String, _ lines: [String]) {
    let dir = repoRoot.appendingPathComponent("test-reports")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try? (lines.joined(separator: "\n") + "\n").write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
    print(lines.joined(separator: "\n"))
}

/// A run's results with its setup as an exchange file would hold them. `params`: the
/// precision the parameters (student, teacher, fixed tables) are stored in; .float32 and
/// .float64 both hold float32 values (a float32 model's state_dict, the latter as
/// tools/sddit_h5.py stores it); nil keeps the setup's float64 values.
func exchangeDatasets(_ s: RunSetup, _ results: [String: NamedTensor], params: Precision?) -> (floats: [String: NamedTensor], ints: [String: ([Int64], [Int])]) {
    var ds = results
    let (floats, ints) = setupDatasets(s)
    for (k, v) in floats {
        let isParam = k.hasPrefix("params/") || k.hasPrefix("teacher/")
        if let p = params, isParam {
            ds[k] = NamedTensor(shape: v.shape, values: v.values.map { Double(Float($0)) }, precision: p)
        } else if ds[k] == nil {
            ds[k] = v
        }
    }
    return (ds, ints)
}

/// `exchangeDatasets` written to a new temporary file; its path.
func writeExchangeFile(_ s: RunSetup, _ results: [String: NamedTensor], params: Precision?, name: String) throws -> String {
    let (ds, ints) = exchangeDatasets(s, results, params: params)
    let path = tempDir().appendingPathComponent(name + ".h5").path
    try ExchangeWriter.write(path, config: s.config, datasets: ds, integers: ints, cfgScale: s.sampler?.cfgScale)
    return path
}
