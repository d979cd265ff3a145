import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTReference

// Double against Float80 (64-bit significand) on the tiny config: the reference's own
// rounding error, measured. Float80 carries 11 more bits, so its difference from Double is
// Double's error to within 1/2048.
@Suite("Double vs Float80")
struct Float80Tests {
    #if arch(x86_64) || arch(i386)
    @Test(arguments: [0.25, 0.0])
    func doubleAgainstFloat80(maskRatio: Double) throws {
        let setup = SeededSetup.make(.tiny, seed: 5, batch: 2, maskRatio: maskRatio, sampleSteps: 5, cfgScale: 1.5)
        let d = try ReferenceBackend.run(setup, as: Double.self)
        let e = try ReferenceBackend.run(setup, as: Float80.self)
        #expect(d.keys.sorted() == e.keys.sorted(), "Double and Float80 runs made different datasets")
        var lines = [String(format: "Double vs Float80, tiny config, seed 5, batch 2, mask ratio %.2f, 5 Heun steps (cfg 1.5)", maskRatio),
                     "max rel = max |d - e| / (|e| + 1e-3 max|e|) element-wise; normwise = max |d - e| / max |e|",
                     String(format: "%-48@ %10@ %10@ %6@", "tensor", "max rel", "normwise", "/eps")]
        var worstNormwise = 0.0, worstName = ""
        for p in DatasetOrder.sorted(Array(d.keys), .tiny) {
            // rtol 1, atolScale 1e-3: the reported rel is |d - e| / (|e| + 1e-3 max|e|).
            let c = Compare.tensors(p, d[p]!, e[p]!, tolerance: Tolerance(rtol: 1, atolScale: 1e-3))
            lines.append(String(format: "%-48@ %10.2e %10.2e %6.0f", p, c.maxRel, c.normwise, c.normwise / Double.ulpOfOne))
            if c.normwise > worstNormwise { worstNormwise = c.normwise; worstName = p }
            // Tolerance: norm-wise error within 1e-13 (~450 eps): the step composes ~100
            // layers over O(10^2)-long sums (measured: README "Tolerances").
            // After-step parameters are judged in units of lr (SPEC hazard 2: Adam turns a
            // noise gradient g into a move of lr g/eps): within 1e-7 lr as in Tolerances.rule
            // (measured worst 4.9e-9 lr, blocks.0.attn.qkv.bias).
            if p.hasPrefix("after_step/params/") { lines[lines.count - 1] += String(format: "   (%.1e lr)", c.maxAbs / setup.config.lr) }
            if let problem = Self.problem(c, lr: setup.config.lr) { Issue.record(Comment(rawValue: problem)) }
        }
        lines.append(String(format: "worst norm-wise: %@ %.2e (%.0f eps)", worstName, worstNormwise, worstNormwise / Double.ulpOfOne))
        Report.add("float80-vs-double.txt", lines)
        print(lines.joined(separator: "\n"))
    }
    #endif

    /// Why a Double-vs-Float80 comparison fails, or nil: a non-finite value or a shape
    /// mismatch (where Compare stops and max abs / normwise stay 0), else the error bounds.
    static func problem(_ c: Comparison, lr: Double) -> String? {
        if let nf = c.nonFinite { return "\(c.name): non-finite \(nf.value) on side \(nf.side) at \(nf.index)" }
        if c.shapeMismatch { return "\(c.name): shape \(c.shapeA) vs \(c.shapeB)" }
        if c.name.hasPrefix("after_step/params/") {
            return c.maxAbs <= 1e-7 * lr ? nil
                : "\(c.name): max |double - float80| \(c.maxAbs) at \(c.maxAbsIndex) (double \(c.maxAbsA), float80 \(c.maxAbsE)) exceeds 1e-7 lr"
        }
        return c.normwise <= 1e-13 ? nil
            : "\(c.name): norm-wise rel \(c.normwise) at \(c.maxAbsIndex): double \(c.maxAbsA) float80 \(c.maxAbsE)"
    }

    /// The verdict above cannot pass a planted NaN, an infinity, a shape change or an error.
    @Test func verdictCatchesPlantedDefects() {
        let t = NamedTensor(shape: [3], values: [1, 2, 3], precision: .float64)
        let e = NamedTensor(shape: [3], values: [1, 2, 3], precision: .float80)
        func verdict(_ name: String, _ a: NamedTensor) -> String? {
            Self.problem(Compare.tensors(name, a, e, tolerance: Tolerance(rtol: 1, atolScale: 1e-3)), lr: 1e-2)
        }
        #expect(verdict("activations/x", t) == nil, "the verdict fails a tensor equal to its Float80 side")
        var nan = t; nan.values[1] = .nan
        #expect(verdict("activations/x", nan) != nil, "the verdict passes a NaN")
        var inf = t; inf.values[2] = .infinity
        #expect(verdict("after_step/params/w", inf) != nil, "the verdict passes an infinite after-step parameter")
        #expect(verdict("activations/x", NamedTensor(shape: [3, 1], values: [1, 2, 3], precision: .float64)) != nil, "the verdict passes a shape mismatch")
        var off = t; off.values[0] += 1e-12
        #expect(verdict("activations/x", off) != nil, "the verdict passes a difference of 1e-12 (far above 1e-13 norm-wise)")
    }
}
