import Foundation
import Testing
import SDDiTCore

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

/// Runs `oracle args...`; returns (exit status, stdout, stderr).
func runOracle(_ args: [String]) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = oracleBinary()
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

func writeReport(_ name: String, _ lines: [String]) {
    let dir = repoRoot.appendingPathComponent("test-reports")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try? (lines.joined(separator: "\n") + "\n").write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
    print(lines.joined(separator: "\n"))
}
