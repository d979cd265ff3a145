import Foundation
import Testing
import SDDiTReference

// Shared test helpers: seeded tensors, central-difference gradient checks with
// reports that name the tensor, the index and both values.

func randomTensor(_ shape: [Int], seed: UInt64, std: Double = 1) -> Tensor<Double> {
    var r = SeededRandom(seed: seed)
    return Tensor(shape: shape, data: r.normals(shape.reduce(1, *), std: std))
}

func dot(_ a: Tensor<Double>, _ b: Tensor<Double>) -> Double {
    zip(a.data, b.data).reduce(0) { $0 + $1.0 * $1.1 }
}

/// The outcome of one finite-difference check.
struct GradCheck: CustomStringConvertible {
    var name: String
    var checked = 0
    var worstAbs = 0.0, worstRel = 0.0
    var worstIndex: [Int] = [], shape: [Int] = []
    var analytic = 0.0, numeric = 0.0
    var failures = 0
    var firstFailure: String?

    var description: String {
        String(format: "%@ %@: %d checked, max abs err %.2e, max rel err %.2e at %@ (analytic %.17g, numeric %.17g)",
               name, "\(shape)", checked, worstAbs, worstRel, "\(worstIndex)", analytic, numeric)
    }
}

/// Central differences in double, h = 1e-6.
/// Tolerance: |analytic - numeric| <= atol + rtol |numeric|. The truncation error is
/// O(h^2 f''') ~ 1e-12 and the rounding error ~ eps |f| / h ~ 1e-10 |f|, so with the
/// O(1)-O(10) objectives used here rtol 1e-6 and atol 1e-8 leave 10-100x margin over
/// the errors measured (see test-reports/gradcheck.txt).
let gradRtol = 1e-6, gradAtol = 1e-8, gradH = 1e-6

func checkGradient(_ name: String, shape: [Int], x: [Double], analytic: [Double], indices: [Int]? = nil,
                   rtol: Double = gradRtol, atol: Double = gradAtol, h: Double = gradH,
                   f: ([Double]) -> Double) -> GradCheck {
    var r = GradCheck(name: name)
    r.shape = shape
    for i in indices ?? Array(0..<x.count) {
        var xp = x, xm = x
        xp[i] += h; xm[i] -= h
        let num = (f(xp) - f(xm)) / (2 * h)
        let a = analytic[i], err = abs(a - num)
        let rel = err / (abs(num) + atol / rtol)
        r.checked += 1
        if rel >= r.worstRel || r.worstIndex.isEmpty {
            r.worstRel = rel; r.worstIndex = unravel(i, shape); r.analytic = a; r.numeric = num
        }
        r.worstAbs = max(r.worstAbs, err)
        if err > atol + rtol * abs(num) {
            r.failures += 1
            if r.firstFailure == nil {
                r.firstFailure = String(format: "%@ %@ at %@: analytic %.17g, numeric %.17g, abs err %.3e, rel err %.3e (rule %.0e + %.0e*|numeric|)",
                                        name, "\(shape)", "\(unravel(i, shape))", a, num, err, rel, atol, rtol)
            }
        }
    }
    return r
}

func expectPasses(_ c: GradCheck, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(c.failures == 0, "\(c.failures) of \(c.checked) entries fail; first: \(c.firstFailure ?? "")",
            sourceLocation: sourceLocation)
    Report.shared.add("gradcheck", c.description)
}

/// Collects tables that tests print and write under test-reports/ (named in the README).
final class Report: @unchecked Sendable {
    static let shared = Report()
    private let lock = NSLock()
    private var lines: [String: [String]] = [:]

    func add(_ file: String, _ line: String) {
        lock.lock(); defer { lock.unlock() }
        lines[file, default: []].append(line)
        write(file)
    }

    private func write(_ file: String) {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("test-reports")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let text = (lines[file] ?? []).sorted().joined(separator: "\n") + "\n"
        try? text.write(to: dir.appendingPathComponent(file + ".txt"), atomically: true, encoding: .utf8)
    }
}
