import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast
import SDDiTReference

// `oracle diff --explain` (issue "Name the bug, not only the place"): every divergence of the
// catalogue, planted through the fast path (float32 files) or, for the values a step can be
// run with, through the reference (float64 files), is named, alone; clean files are never
// explained; two divergences together are named together or not at all; a cause outside the
// catalogue is "not explained". Independent PyTorch files: tools/explain-corpus.sh (README
// "Naming the bug").
@Suite("oracle diff --explain")
struct ExplainTests {
    static let setup = SeededSetup.make(.tiny, seed: 3, batch: 2, maskRatio: 0.5, sampleSteps: nil, cfgScale: nil)

    /// The explanation of a file with `results` of `setup` (its config as `setup`'s).
    static func explain(_ results: [String: NamedTensor], params: Precision, name: String) throws -> (DiffReport, [Explanation]) {
        // a float64 file keeps the setup's Double parameters; a float32 one holds them rounded
        let path = try writeExchangeFile(setup, results, params: params == .float64 ? nil : params, name: "explain-" + name)
        let r = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())
        return (r, try Explainer.explain(path, report: r, options: DiffOptions()))
    }

    /// The ids the first explanation names, or nil when it says "not explained".
    static func named(_ e: [Explanation]) -> [String]? {
        guard let first = e.first, first.kind == .explained else { return nil }
        return first.divergences
    }

    static func lines(_ e: [Explanation]) -> String { e.map { $0.line }.joined(separator: "\n") }

    static func fast(_ v: FastVariant, config: (inout ModelConfig) -> Void = { _ in }) throws -> [String: NamedTensor] {
        var s = setup
        config(&s.config)
        return try FastBackend.run(s.fastSetup, precision: .fp32, variant: v)
    }

    /// Every catalogue entry, planted through the fast path in a float32 file, is named alone.
    @Test(arguments: Divergences.catalogue(.tiny).map(\.id))
    func catalogueEntryIsNamed(_ id: String) throws {
        let d = try #require(Divergences.catalogue(.tiny).first { $0.id == id }, "no catalogue entry \(id)")
        let (r, e) = try Self.explain(try Self.fast(d.variant), params: .float32, name: id.replacingOccurrences(of: ":", with: "_"))
        #expect(!r.passed, "\(id): the planted file passes, nothing to explain")
        #expect(Self.named(e) == [id], "\(id): explained as \(Self.named(e) ?? ["not explained"]):\n\(Self.lines(e))")
    }

    /// The values a step runs with, planted in float32 (fast path) and float64 (reference)
    /// files whose config keeps the setup's values: the fit finds the value, the rerun confirms it.
    @Test(arguments: [("lr", 1e-3), ("weight_decay", 0.01), ("adam_eps", 1e-4), ("tau_t", 0.04), ("tau_s", 0.2),
                      ("ema_beta", 0.99), ("center_momentum", 0.99)] as [(String, Double)])
    func configValueIsFitted(_ key: String, _ value: Double) throws {
        let d = Divergences.configValue(key, value, Self.setup.config)
        var s = Self.setup
        d.apply(&s.config)
        for (p, results) in [(Precision.float32, try Self.fast(FastVariant(), config: d.apply)),
                             (.float64, try ReferenceBackend.run(s, as: Double.self))] {
            let (r, e) = try Self.explain(results, params: p, name: "\(key)-\(p)")
            #expect(!r.passed, "\(key) \(value) in \(p): the file passes")
            #expect(Self.named(e) == [d.id], "\(key) \(value) in \(p): explained as \(Self.named(e) ?? ["not explained"]):\n\(Self.lines(e))")
            #expect(e.contains { $0.kind == Explanation.Kind.fit && $0.divergences == [d.id] }, "\(key) \(value) in \(p): no fit line names \(d.id)")
        }
    }

    /// Parameters left out of the optimizer and a learned (non-zero) mask token: fitted from
    /// the file (the keys that did not move; the vector at every hidden position) and named.
    @Test func fittedStructureIsNamed() throws {
        var frozen = FastVariant()
        frozen.frozenPrefix = "final_layer."
        let (_, e1) = try Self.explain(try Self.fast(frozen), params: .float32, name: "frozen")
        #expect(Self.named(e1) == ["frozen:final_layer."], "\(Self.lines(e1))")
        var token = FastVariant()
        token.maskToken = true
        token.maskTokenValues = (0..<ModelConfig.tiny.hiddenSize).map { Float(sin(Double($0) * 0.7)) * 0.02 }
        let (_, e2) = try Self.explain(try Self.fast(token), params: .float32, name: "mask-token-values")
        #expect(Self.named(e2) == ["mask-token=fitted"], "\(Self.lines(e2))")
    }

    /// Clean files (the reference in float64, the fast path, the reference's code in Float)
    /// pass and are never explained.
    @Test func cleanFilesAreNotExplained() throws {
        for (name, results, p) in [("ref", try ReferenceBackend.run(Self.setup, as: Double.self), Precision.float64),
                                   ("fast", try Self.fast(FastVariant()), .float32),
                                   ("ref32", try ReferenceBackend.run(Self.setup, as: Float.self), .float32)] {
            let (r, e) = try Self.explain(results, params: p, name: "clean-" + name)
            #expect(r.passed, "clean \(name) fails: \(r.summary)")
            #expect(e.isEmpty, "clean \(name) is explained: \(Self.lines(e))")
        }
    }

    /// Two divergences together are named together; a cause outside the catalogue (LayerNorm
    /// eps 1e-3, the catalogue has 1e-5) is "not explained", and neither is named as one alone.
    @Test func compositionsAndOutsiders() throws {
        var a = FastVariant(exactGELUBlock: 1)
        a.emaReversed = true
        let (_, e1) = try Self.explain(try Self.fast(a), params: .float32, name: "gelu1-ema")
        #expect(Self.named(e1).map(Set.init) == ["gelu-exact:1", "ema-reversed"], "\(Self.lines(e1))")
        let wd = Divergences.configValue("weight_decay", 0.01, Self.setup.config)
        let (_, e2) = try Self.explain(try Self.fast(FastVariant(shiftScaleSwapBlock: 0), config: wd.apply), params: .float32, name: "shift0-wd")
        #expect(Self.named(e2).map(Set.init) == ["shift-scale:0", wd.id], "\(Self.lines(e2))")
        let (r3, e3) = try Self.explain(try Self.fast(FastVariant(layerNormEpsBlock: 0, layerNormEps: 1e-3)), params: .float32, name: "eps1e-3")
        #expect(!r3.passed && Self.named(e3) == nil, "LayerNorm eps 1e-3 named as \(Self.named(e3) ?? [])")
        #expect(e3.first?.text.hasPrefix("not explained by any of") == true, "\(Self.lines(e3))")
    }

    /// The README's table names every entry of the catalogue (block entries as `KIND:B`) and
    /// every kind of fitted value.
    @Test func readmeListsTheCatalogue() throws {
        let readme = try String(contentsOf: repoRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## Naming the bug").dropFirst().first, "README has no \"Naming the bug\" section")
        var ids = Set(Divergences.catalogue(.tiny).map { $0.id.replacingOccurrences(of: #":\d+(:|$)"#, with: ":B$1", options: .regularExpression) })
        ids.formUnion(["lr=X", "weight_decay=X", "adam_eps=X", "tau_t=X", "tau_s=X", "ema_beta=X", "center_momentum=X", "frozen:PREFIX", "mask-token=fitted"])
        for id in ids.sorted() { #expect(section.contains("`\(id)`"), "README \"Naming the bug\" does not list `\(id)`") }
    }

    /// An extra weight decay in a TF32 or bf16-autocast file fails (AdamW runs in float32 on
    /// the master parameters there: the after-step rule's slack is float32's, not the mode's)
    /// and is named; the clean file of the mode passes.
    @Test(arguments: [(PrecisionMode.tf32, FastPrecision.tf32), (.bf16Autocast, .bf16)])
    func extraWeightDecayInAReducedMode(_ mode: PrecisionMode, _ fp: FastPrecision) throws {
        let wd = Divergences.configValue("weight_decay", 0.01, Self.setup.config)
        var s = Self.setup
        wd.apply(&s.config)
        for (name, setup) in [("clean", Self.setup), ("wd", s)] {
            let results = try FastBackend.run(setup.fastSetup, precision: fp, variant: FastVariant())
            let path = try writeExchangeFile(Self.setup, results, params: .float32, name: "explain-\(mode)-\(name)", mode: mode)
            let r = try DiffEngine.run(a: .file(path), b: .backend(.ref), options: DiffOptions())
            if name == "clean" { #expect(r.passed, "clean \(mode): \(r.summary)"); continue }
            #expect(r.comparisons.first { !$0.passed }?.name.hasPrefix("after_step/params/") == true,
                    "weight decay 0.01 in \(mode): first FAIL \(r.comparisons.first { !$0.passed }?.name ?? "none")")
            let e = try Explainer.explain(path, report: r, options: DiffOptions())
            #expect(Self.named(e) == [wd.id], "\(mode): \(Self.lines(e))")
        }
    }
}
