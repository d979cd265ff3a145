import Foundation
import Testing
import SDDiTCore
import SDDiTExchange

// Helpers shared by every test target: the repository's paths, running the `oracle`
// executable, seeded tensors, finite-difference gradient checks, and the reports under
// test-reports/.
public let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The shared directory beside the repository (`../shared`: SPEC.md, the PyTorch fixtures, the
/// peer benchmark); it may be absent where only the repository was checked out.
public let sharedDir = repoRoot.deletingLastPathComponent().appendingPathComponent("shared")

public func fixture(_ name: String) -> String { repoRoot.appendingPathComponent("fixtures/\(name)").path }

/// The PyTorch fixtures (../shared/fixtures, copied): every one must be reproduced.
public let pytorchFixtures = ["public_train_tiny.h5", "public_infer_tiny.h5", "public_odd_shapes.h5",
                       "public_sampler_tiny.h5", "public_sampler_cfg_tiny.h5"]

public func tempDir() -> URL {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("oracle-tests-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    return d
}

/// The built `oracle` executable, next to the test bundle.
public func oracleBinary() -> URL {
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
public func runOracle(_ args: [String], env: [String: String] = [:]) throws -> (Int32, String, String) {
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

public final class UncheckedBox<T>: @unchecked Sendable { public var value: T; public init(_ v: T) { value = v } }

/// Bad input: a non-zero exit, one error line on stderr (argument-parser's usage lines aside)
/// that mentions `mentions`, and no crash.
public func expectOneLineError(_ args: [String], mentions: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (code, _, err) = try runOracle(args)
    #expect(code != 0, "\(args) exited 0", sourceLocation: sourceLocation)
    // ArgumentParser's usage lines (and its "Help:" line, the option's help repeated) follow the error
    let lines = err.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.hasPrefix("  See") && !$0.hasPrefix("Help:") }
    #expect(lines.count == 1, "\(args): expected one error line, got:\n\(err)", sourceLocation: sourceLocation)
    #expect(err.contains(mentions), "\(args): error does not mention '\(mentions)': \(err)", sourceLocation: sourceLocation)
    #expect(!err.contains("Fatal error") && !err.contains("Stack dump"), "\(args) crashed: \(err)", sourceLocation: sourceLocation)
}

public func randomTensor(_ shape: [Int], seed: UInt64, std: Double = 1) -> Tensor<Double> {
    var r = SeededRandom(seed: seed)
    return Tensor(shape: shape, data: r.normals(shape.reduce(1, *), std: std))
}

public func dot(_ a: Tensor<Double>, _ b: Tensor<Double>) -> Double {
    zip(a.data, b.data).reduce(0) { $0 + $1.0 * $1.1 }
}

// Folds that keep NaN. Swift's `max(_:_:)` and `Sequence.max()` drop a NaN (`max(1, .nan)` is
// 1, and `[1, .nan, 2].max()` is 2), so a worst-error fold over a result holding NaN could
// pass a check such as `worst <= tol`. These return NaN when any value is NaN, and every
// comparison with NaN fails.

/// The largest of `values`; NaN when any of them is NaN; `empty` when there are none.
public func maxOrNaN<S: Sequence>(_ values: S, empty: Double = 0) -> Double where S.Element == Double {
    var it = values.makeIterator()
    guard var m = it.next() else { return empty }
    if m.isNaN { return .nan }
    while let v = it.next() {
        if v.isNaN { return .nan }
        if v > m { m = v }
    }
    return m
}

/// max |v_i| (0 for none), NaN when any v_i is NaN.
public func maxAbsOrNaN(_ values: [Double]) -> Double { maxOrNaN(values.lazy.map { abs($0) }) }

/// max |a_i - b_i| (0 for none), NaN when any difference is NaN or the lengths differ.
public func maxAbsDiffOrNaN(_ a: [Double], _ b: [Double]) -> Double {
    a.count == b.count ? maxOrNaN(zip(a, b).lazy.map { abs($0 - $1) }) : .nan
}

/// The outcome of one finite-difference check.
public struct GradCheck: CustomStringConvertible {
    public var name: String
    public var checked = 0
    public var worstAbs = 0.0, worstRel = 0.0
    public var worstIndex: [Int] = [], shape: [Int] = []
    public var analytic = 0.0, numeric = 0.0
    public var failures = 0
    public var firstFailure: String?
    public init(name: String) { self.name = name }

    public var description: String {
        String(format: "%@ %@: %d checked, max abs err %.2e, max rel err %.2e at %@ (analytic %.17g, numeric %.17g)",
               name, "\(shape)", checked, worstAbs, worstRel, "\(worstIndex)", analytic, numeric)
    }
}

/// Fourth-order central differences in double:
///   f'(x) ~ (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h,
/// truncation O(h^4 f^(5)), rounding ~1.5 eps S / h with S the magnitude of the summed terms
/// of f. The plain 2-point stencil at h = 1e-6 was measured at up to 1e-8 absolute error on
/// the DiT block (S ~ 100: rounding dominates), too close to any useful tolerance; the
/// 5-point stencil at h = 1e-3 (layers) / 1e-4 (whole model, sharper: 1/tau_S = 10) brings
/// both terms near 1e-11. Tolerance |analytic - numeric| <= atol + rtol |numeric| with
/// rtol 1e-7, atol 1e-9: about 10x the worst error measured (test-reports/gradcheck.txt).
public let gradRtol = 1e-7, gradAtol = 1e-9, gradH = 1e-3

public func checkGradient(_ name: String, shape: [Int], x: [Double], analytic: [Double], indices: [Int]? = nil,
                   rtol: Double = gradRtol, atol: Double = gradAtol, h: Double = gradH,
                   f: ([Double]) -> Double) -> GradCheck {
    var r = GradCheck(name: name)
    r.shape = shape
    for i in indices ?? Array(0..<x.count) {
        func at(_ d: Double) -> Double { var y = x; y[i] += d; return f(y) }
        let num = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
        let a = analytic[i], err = abs(a - num)
        let rel = err / (abs(num) + atol / rtol)
        r.checked += 1
        // the worst entry as reported: a NaN error is the worst and stays so (`max` would drop it)
        if !r.worstRel.isNaN && (rel >= r.worstRel || rel.isNaN || r.worstIndex.isEmpty) {
            r.worstRel = rel; r.worstIndex = unravel(i, shape); r.analytic = a; r.numeric = num
        }
        if !r.worstAbs.isNaN && (err > r.worstAbs || err.isNaN) { r.worstAbs = err }
        if !(err <= atol + rtol * abs(num)) {   // a NaN on either side fails too
            r.failures += 1
            if r.firstFailure == nil {
                r.firstFailure = String(format: "%@ %@ at %@: analytic %.17g, numeric %.17g, abs err %.3e, rel err %.3e (rule %.0e + %.0e*|numeric|)",
                                        name, "\(shape)", "\(unravel(i, shape))", a, num, err, rel, atol, rtol)
            }
        }
    }
    return r
}

public func expectPasses(_ c: GradCheck, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(c.failures == 0, "\(c.failures) of \(c.checked) entries fail; first: \(c.firstFailure ?? "")",
            sourceLocation: sourceLocation)
    Report.add("gradcheck.txt", [c.description])
}

/// Tables that tests print and keep under test-reports/ (named in the README): one helper for
/// every test target.
public enum Report {
    nonisolated(unsafe) static var sections: [String: [String: [String]]] = [:]
    static let lock = NSLock()

    /// Adds a section (keyed by its first line) to test-reports/FILE; the file holds every
    /// section added in this process, sorted by key, so parallel tests give the same file.
    public static func add(_ file: String, _ lines: [String]) {
        lock.lock(); defer { lock.unlock() }
        sections[file, default: [:]][lines.first ?? ""] = lines
        save(file, sections[file]!.sorted { $0.key < $1.key }.flatMap { $0.value })
    }

    /// Writes test-reports/FILE with `lines` alone, and prints them.
    public static func write(_ file: String, _ lines: [String]) {
        save(file, lines)
        print(lines.joined(separator: "\n"))
    }

    static func save(_ file: String, _ lines: [String]) {
        let dir = repoRoot.appendingPathComponent("test-reports")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try? (lines.joined(separator: "\n") + "\n").write(to: dir.appendingPathComponent(file), atomically: true, encoding: .utf8)
    }
}

/// A run's results with its setup as an exchange file would hold them. `params`: the
/// precision the parameters (student, teacher, fixed tables) are stored in; .float32 and
/// .float64 both hold float32 values (a float32 model's state_dict, the latter as
/// tools/sddit_h5.py stores it); nil keeps the setup's float64 values.
public func exchangeDatasets(_ s: RunSetup, _ results: [String: NamedTensor], params: Precision?) -> (floats: [String: NamedTensor], ints: [String: ([Int64], [Int])]) {
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
public func writeExchangeFile(_ s: RunSetup, _ results: [String: NamedTensor], params: Precision?, name: String,
                              mode: PrecisionMode? = nil) throws -> String {
    let (ds, ints) = exchangeDatasets(s, results, params: params)
    let path = tempDir().appendingPathComponent(name + ".h5").path
    try ExchangeWriter.write(path, config: s.config, datasets: ds, integers: ints, cfgScale: s.sampler?.cfgScale, precisionMode: mode)
    return path
}
