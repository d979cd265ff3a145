import Foundation
import Testing
import HDF5IO

/// Runs `body` with a fresh temporary directory that is removed afterwards.
func withTempDir<T>(_ body: (URL) throws -> T) throws -> T {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hdf5io-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    return try body(dir)
}

/// Sorted names of the entries in `dir` (hidden files included).
func listing(_ dir: URL) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
}

/// Runs a program found on PATH; returns its exit status and combined stdout+stderr.
func runTool(_ arguments: [String]) -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "cannot run \(arguments): \(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// python3 with h5py is importable (the interop tests are skipped otherwise).
let h5pyAvailable: Bool = runTool(["python3", "-c", "import h5py"]).status == 0

/// h5dump (hdf5-tools) is on PATH.
let h5dumpAvailable: Bool = runTool(["h5dump", "--version"]).status == 0

/// The h5py-written fixture file (regenerate with Fixtures/make_fixtures.py).
func fixtureURL() throws -> URL {
    let url = Bundle.module.bundleURL.appendingPathComponent("Fixtures/types.h5")
    try #require(FileManager.default.fileExists(atPath: url.path), "missing fixture \(url.path)")
    return url
}

/// C-order test data for `shape`: distinct, sign-varying, non-integral values.
func sampleDoubles(_ shape: [Int]) -> [Double] {
    (0..<shape.reduce(1, *)).map { Double($0) * 0.75 - 3.1 }
}

/// Expects `body` to throw an HDF5Error whose message contains every one of `fragments`.
func expectHDF5Error(_ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an HDF5Error containing \(fragments), but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as HDF5Error {
        for fragment in fragments {
            #expect(error.description.contains(fragment), "error '\(error)' should contain '\(fragment)'",
                    sourceLocation: sourceLocation)
        }
        #expect(!error.description.contains("\n"), "error should be one line: '\(error)'", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected HDF5Error, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
}
