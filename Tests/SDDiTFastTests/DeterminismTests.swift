import Dispatch
import Foundation
import Synchronization
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTTraining
import SDDiTFast

// The fast path's bits do not depend on the thread count or on what else runs in the process
// (issue "The conformance gate holds on every machine"). OpenBLAS is single-threaded for good;
// every product is split into tiles fixed by its shape (`sgemmTiles`), so these hold by
// construction, and these tests check it on a config large enough for the products to be
// split (tiny's are one tile each).
@Suite("Same bits whatever the threads")
struct DeterminismTests {
    /// hidden 128, head 1024-way, batch 8 at 16x16 (64 tokens): the MLP product is
    /// 520 x 512 x 128 (4 tiles), the head's 520 x 1024 x 64 (4 tiles, by columns).
    static let mid: ModelConfig = {
        var c = ModelConfig(name: "mid", inputSize: 16, hiddenSize: 128, depth: 2, numHeads: 4,
                            decoderHiddenSize: 64, decoderDepth: 1, decoderNumHeads: 4, numClasses: 10,
                            headHiddenDim: 256, headBottleneckDim: 64, headOutDim: 1024)
        c.lr = 1e-3
        return c
    }()

    static func options(_ p: FastPrecision, seed: UInt64 = 3) -> TrainOptions {
        var o = TrainOptions(config: mid)
        o.precision = p; o.steps = 3; o.batch = 8; o.seed = seed; o.dataSeed = 1
        o.trainSize = 64; o.heldOutSize = 8; o.initMode = .random
        return o
    }

    /// Every bit of a run: losses, student, teacher, centers, Adam moments, gradients, scale.
    static func fingerprint(_ o: TrainOptions) throws -> [String: [UInt64]] {
        let t = try Trainer(o)
        for _ in 0..<o.steps { try t.trainStep() }
        var f: [String: [UInt64]] = [:]
        f["history"] = t.history.flatMap { $0.map(\.bitPattern) }
        for (teacher, tag) in [(false, "student."), (true, "teacher.")] {
            for (k, v) in t.model.parameters(teacher: teacher) { f[tag + k] = v.data.map(\.bitPattern) }
        }
        for (k, g) in t.model.grads { f["grad." + k] = g.array().map { UInt64($0.bitPattern) } }
        let s = t.model.optimizerState()
        for (k, m) in s.m { f["adam.m." + k] = m.map { UInt64($0.bitPattern) } }
        for (k, v) in s.v { f["adam.v." + k] = v.map { UInt64($0.bitPattern) } }
        f["centers"] = (t.model.centerCls + t.model.centerPatch).map { UInt64($0.bitPattern) }
        f["scale"] = [UInt64(t.model.scaler.scale.bitPattern), UInt64(t.model.scaler.skippedSteps)]
        return f
    }

    static func differing(_ a: [String: [UInt64]], _ b: [String: [UInt64]]) -> [String] {
        Set(a.keys).union(b.keys).filter { a[$0] != b[$0] }.sorted()
    }

    @Test func productsAreSplitIntoFixedTiles() {
        // the config above really exercises the split products
        #expect(sgemmTileCount(520, 512, 128) == 4 && sgemmTileCount(520, 1024, 64) == 4, "the test config's products are not split into 4 tiles")
        // tiny's products are one tile: the split is a function of the shape alone
        #expect(sgemmTileCount(34, 96, 32) == 1, "a tiny product is split into tiles")
    }

    /// Three training steps in float32 and in fp16 with GradScaler, at 1, 2 and 3 threads:
    /// bit-identical (before, OpenBLAS's own threading changed the sums' bits).
    @Test(arguments: [FastPrecision.fp32, .fp16])
    func trainingStepSameBitsAt1To3Threads(_ p: FastPrecision) throws {
        let saved = FastThreads.workers
        defer { FastThreads.setWorkers(saved) }
        var runs: [[String: [UInt64]]] = []
        for n in [1, 2, 3] {
            FastThreads.setWorkers(n)
            runs.append(try Self.fingerprint(Self.options(p)))
        }
        #expect(runs[0].count > 100, "\(p): the fingerprint holds only \(runs[0].count) tensors")
        for (i, n) in [2, 3].enumerated() {
            let d = Self.differing(runs[0], runs[i + 1])
            #expect(d.isEmpty, "\(p): \(n) threads differ from 1 thread in \(d.count) tensors: \(d.prefix(4))")
        }
        if p == .fp16 { #expect(runs[0]["scale"]![1] >= 0, "fp16: the fingerprint records no loss scale") }
    }

    /// Four models in mixed settings (float32, fp16 with GradScaler, bf16, float32 on another
    /// seed) stepping at once while the thread setting changes under them: each equals its
    /// own serial run bit for bit.
    @Test func concurrentModelsUnderMixedSettings() throws {
        let settings = [Self.options(.fp32), Self.options(.fp16), Self.options(.bf16), Self.options(.fp32, seed: 7)]
        let saved = FastThreads.workers
        defer { FastThreads.setWorkers(saved) }
        let serial = try settings.map { try Self.fingerprint($0) }
        let results = Mutex<[Int: [String: [UInt64]]]>([:])
        let done = Atomic<Int>(0)
        let box = UncheckedBox(settings)
        DispatchQueue.concurrentPerform(iterations: settings.count + 1) { i in
            if i == settings.count {   // the thread setting changes while the models run
                var n = 0
                while done.load(ordering: .acquiring) < settings.count {
                    FastThreads.setWorkers(1 + n % 3); n += 1
                    usleep(200)
                }
                return
            }
            let f = try? Self.fingerprint(box.value[i])
            results.withLock { $0[i] = f }
            done.add(1, ordering: .releasing)
        }
        let got = results.withLock { $0 }
        for i in settings.indices {
            guard let f = got[i] else { Issue.record("model \(i) threw"); continue }
            let d = Self.differing(serial[i], f)
            #expect(d.isEmpty, "model \(i) (\(settings[i].precision)) differs from its serial run in \(d.count) tensors: \(d.prefix(4))")
        }
    }
}
