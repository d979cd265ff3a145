import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTFast

// The streamed fast step (`FastBackend.stream`: float32 model only, AdamW's first step and the
// EMA one tensor at a time) against the whole-model run, and `CalibrationRun`'s two ways of
// keeping its results (held, or a temporary float32 exchange file read on demand).
@Suite("Streamed fast step and calibration runs")
struct CalibrationRunTests {
    static func same(_ a: NamedTensor, _ b: NamedTensor) -> Bool {
        a.shape == b.shape && a.precision == b.precision && a.values.count == b.values.count
            && zip(a.values, b.values).allSatisfy { $0.bitPattern == $1.bitPattern }
    }

    /// Every result of the streamed step equals `FastBackend.run`'s bit for bit, in every
    /// precision mode, with and without guidance, and with a planted variant; in the fp16
    /// modes these setups make GradScaler back off from its initial scale (retried steps).
    @Test(arguments: Backend.allCases.filter { $0.fastPrecision != nil })
    func streamedStepEqualsTheWholeModelRun(_ be: Backend) throws {
        for (seed, cfgScale) in [(1, nil), (2, 1.5)] as [(UInt64, Double?)] {
            let s = SeededSetup.make(.tiny, seed: seed, batch: 2, maskRatio: 0.5, sampleSteps: 3, cfgScale: cfgScale)
            if be.fastPrecision!.isFP16 {
                let f = s.fastSetup
                let m = FastModel(.tiny, precision: be.fastPrecision!, student: f.student, teacher: f.teacher,
                                  centerCls: f.centerCls, centerPatch: f.centerPatch)
                let r = try m.trainStepFindingScale(f.inputs!)
                #expect(r.lossScale < LossScaler(enabled: true).scale, "\(be.rawValue) seed \(seed): no retry at a lower loss scale")
            }
            for v in [FastVariant(), FastVariant(layerNormEpsBlock: 0, layerNormEps: 1e-5)] {
                let whole = try FastBackend.run(s.fastSetup, precision: be.fastPrecision!, variant: v)
                var streamed: [String: NamedTensor] = [:], order: [String] = []
                try FastBackend.stream(s.fastSetup, precision: be.fastPrecision!, variant: v) { p, d in
                    #expect(streamed[p] == nil, "\(p) handed over twice")
                    streamed[p] = d; order.append(p)
                }
                #expect(Set(streamed.keys) == Set(whole.keys), "\(be.rawValue) seed \(seed): \(Set(streamed.keys).symmetricDifference(whole.keys).sorted().prefix(5))")
                #expect(order == DatasetOrder.sorted(order, .tiny), "\(be.rawValue) seed \(seed): the streamed run's datasets are not in DatasetOrder")
                let bad = whole.keys.filter { k in streamed[k].map { !Self.same($0, whole[k]!) } ?? true }.sorted()
                #expect(bad.isEmpty, "\(be.rawValue) seed \(seed) variant \(v.layerNormEpsBlock != nil): \(bad.prefix(5))")
            }
        }
    }

    /// `Backend.run` of a fast mode is the streamed step collected: the same numbers as the
    /// whole-model run.
    @Test func backendRunIsTheStreamedStep() throws {
        let s = SeededSetup.make(.tiny, seed: 4, batch: 2, maskRatio: 0.25, sampleSteps: 3)
        let a = try Backend.fastBF16.run(s), b = try FastBackend.run(s.fastSetup, precision: .bf16)
        #expect(Set(a.keys) == Set(b.keys) && a.keys.allSatisfy { Self.same(a[$0]!, b[$0]!) }, "Backend.fastBF16.run differs from FastBackend.run in bf16 (keys or values)")
    }

    /// With `memory` so small that the results would take over a quarter of it (but the step
    /// fits), the run goes to a temporary file; it serves the same tensors (values, shapes,
    /// the mode's precision label, float64 sampler sigmas) as a held run, and the file is
    /// deleted with the run.
    @Test(arguments: [Backend.fast, .fastFP16])
    func temporaryFileServesWhatAHeldRunHolds(_ be: Backend) throws {
        let s = SeededSetup.make(.tiny, seed: 5, batch: 2, maskRatio: 0.25, sampleSteps: 3, cfgScale: 1.5)
        let (N, V) = (2, s.inputs!.mask[0].filter { $0 == 0 }.count)
        let step = be.estimatedStepBytes(.tiny, batch: N, visible: V), results = be.estimatedResultsBytes(s)
        let memory = step / 0.8 * 1.01
        #expect(results > 0.25 * memory, "results \(results) B, step \(step) B: no memory forces the file")
        let held = try FastBackend.run(s.fastSetup, precision: be.fastPrecision!)
        // this run's own file (tests run in parallel: other runs may have theirs meanwhile)
        var path: String? = nil
        do {
            let run = try CalibrationRun.run(be, s, memory: memory)
            path = run.filePath
            #expect(path.map { FileManager.default.fileExists(atPath: $0) } == true, "no temporary file")
            #expect(run.backend == be, "the calibration run names backend \(run.backend.rawValue), not \(be.rawValue)")
            for (p, d) in held {
                let t = try run.tensor(p)
                #expect(t.map { Self.same($0, d) } ?? false, "\(be.rawValue) \(p): \(String(describing: t?.precision)) vs \(d.precision)")
            }
            #expect(try run.tensor("activations/no.such.tensor") == nil, "\(be.rawValue): a dataset the run never made is not nil")
            let small = try CalibrationRun.run(be, s)   // this machine's memory: held
            #expect(small.filePath == nil && !small.spilled, "a run that fits this machine's memory was written to a file (\(String(describing: small.filePath)))")
            for (p, d) in held { #expect(try small.tensor(p).map { Self.same($0, d) } ?? false, "the held run serves another \(p) than the direct run") }
        }
        #expect(path.map { !FileManager.default.fileExists(atPath: $0) } == true, "temporary file left behind")
    }
}
