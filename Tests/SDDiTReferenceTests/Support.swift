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

/// Fourth-order central differences in double:
///   f'(x) ~ (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / 12h,
/// truncation O(h^4 f^(5)), rounding ~1.5 eps S / h with S the magnitude of the summed terms
/// of f. The plain 2-point stencil at h = 1e-6 was measured at up to 1e-8 absolute error on
/// the DiT block (S ~ 100: rounding dominates), too close to any useful tolerance; the
/// 5-point stencil at h = 1e-3 (layers) / 1e-4 (whole model, sharper: 1/tau_S = 10) brings
/// both terms near 1e-11. Tolerance |analytic - numeric| <= atol + rtol |numeric| with
/// rtol 1e-7, atol 1e-9: about 10x the worst error measured (test-reports/gradcheck.txt).
let gradRtol = 1e-7, gradAtol = 1e-9, gradH = 1e-3

func checkGradient(_ name: String, shape: [Int], x: [Double], analytic: [Double], indices: [Int]? = nil,
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
        if rel >= r.worstRel || r.worstIndex.isEmpty {
            r.worstRel = rel; r.worstIndex = unravel(i, shape); r.analytic = a; r.numeric = num
        }
        r.worstAbs = max(r.worstAbs, err)
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
