import Foundation
import Testing
import TestSupport
import HDF5IO
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTReference

// The float64 reference against the independent PyTorch implementation (../shared/fixtures):
// every recorded tensor, at the float64 tolerances of Tolerances.rule (rtol 1e-9 plus the
// scale and lr terms of SPEC's comparison hazards).
@Suite("Conformance with the PyTorch fixtures")
struct ConformanceTests {
    @Test(arguments: pytorchFixtures)
    func referenceReproducesFixture(_ name: String) throws {
        let r = try DiffEngine.run(a: .file(fixture(name)), b: .backend(.ref), options: DiffOptions())
        for c in r.comparisons where !c.passed {
            Issue.record(Comment(rawValue: "\(name): " + c.lines(labelA: name, labelB: "ref").joined(separator: "\n")))
        }
        #expect(r.comparisons.count > 0, "\(name): nothing compared")
        #expect(r.failed == 0 && r.onlyInA.isEmpty && r.onlyInB.isEmpty,
                "\(name): \(r.summary); only in the file: \(r.onlyInA.prefix(5)); only in ref: \(r.onlyInB.prefix(5))")
        // What each fixture must cover.
        let groups = Set(r.comparisons.map { String($0.name.split(separator: "/")[0]) })
        let expected: Set<String> = name.contains("sampler") ? ["params", "sampler"]
            : name.contains("infer") ? ["params", "activations", "losses", "grads"]
            : ["params", "activations", "losses", "grads", "after_step"]
        #expect(groups == expected, "\(name): compared groups \(groups.sorted()), expected \(expected.sorted())")
        var lines = ["\(name): \(r.summary)"]
        var worst: [String: (Double, String)] = [:]
        for c in r.comparisons {
            let g = c.name.hasPrefix("after_step/params") ? "after_step/params" : String(c.name.split(separator: "/")[0])
            if c.maxRel >= (worst[g]?.0 ?? -1) { worst[g] = (c.maxRel, c.name) }
        }
        for (g, w) in worst.sorted(by: { $0.key < $1.key }) {
            lines.append(String(format: "  %-18@ max rel %.2e  (%@)", g, w.0, w.1))
        }
        Report.add("conformance.txt", lines)
    }

    /// A perturbed copy of a fixture fails, naming the perturbed tensor first.
    @Test func perturbedFixtureFails() throws {
        let dir = tempDir()
        let src = try ExchangeFile.read(fixture("public_train_tiny.h5"))
        var ds = src.datasets
        let target = "activations/student.dec.block.0"
        ds[target]!.values[5] *= 1 + 1e-6
        let out = dir.appendingPathComponent("perturbed.h5").path
        var ints: [String: ([Int64], [Int])] = [:]
        for (k, v) in src.integers { ints[k] = (v, src.datasets[k]!.shape); ds[k] = nil }
        try ExchangeWriter.write(out, config: src.config, datasets: ds, integers: ints)
        let r = try DiffEngine.run(a: .file(out), b: .backend(.ref), options: DiffOptions())
        #expect(r.failed == 1, "expected exactly the perturbed tensor to fail: \(r.summary)")
        let first = r.comparisons.first { !$0.passed }
        #expect(first?.name == target, "first failure \(first?.name ?? "none"), expected \(target)")
        #expect(first?.maxAbsIndex == unravel(5, ds[target]!.shape), "worst index \(first?.maxAbsIndex ?? [])")
    }
}

/// `Comparison.bits`, the precision fingerprint of `oracle diff`'s group lines: -log2 of the
/// norm-wise error, capped at 64, and 64 for equal sides.
@Suite("Bits of agreement")
struct BitsOfAgreementTests {
    static func bits(_ a: [Double], _ b: [Double]) -> Double {
        Compare.tensors("t", NamedTensor(shape: [a.count], values: a, precision: .float64),
                        NamedTensor(shape: [b.count], values: b, precision: .float64),
                        tolerance: Tolerance(rtol: 1e-9)).bits
    }

    @Test func bitsFromTheNormwiseError() {
        #expect(Self.bits([1, 2, 4], [1, 2, 4]) == 64, "equal sides do not give 64 bits")
        #expect(Self.bits([1, 2, 4 + 0x1p-18], [1, 2, 4]) == 20, "an error of 2^-20 of max|e| does not give 20 bits")
        // a last-bit difference on a small element: the norm-wise error is below 2^-53
        #expect(Self.bits([0x1p-20 + 0x1p-60, 1], [0x1p-20, 1]) == 60, "a difference of 2^-60 against max|e| 1 does not give 60 bits")
        #expect(Self.bits([0x1p-1000, 1], [0, 1]) == 64, "bits are not capped at 64")
    }
}
