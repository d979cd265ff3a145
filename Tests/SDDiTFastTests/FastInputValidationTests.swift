import Testing
import SDDiTCore
import SDDiTFast
import SDDiTReference

// The fast path's public entry points throw a ConfigError on a malformed batch instead of
// reading or writing out of bounds.
@Suite("Fast path input validation")
struct FastInputValidationTests {
    static let cfg = ModelConfig.tiny

    static func model() -> FastModel {
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 1)
        return FastModel(cfg, precision: .fp32, student: P.tensors, teacher: P.subset(cfg.teacherParameters).tensors)
    }

    static func inputs() -> FastStepInputs {
        let I: StepInputs<Double> = Initialization.inputs(cfg, batch: 2, maskRatio: 0.5, seed: 2)
        return FastStepInputs(x0: I.x0.data, labels: I.labels, sigmaS: I.sigmaS, noiseS: I.noiseS.data, noiseT: I.noiseT.data, mask: I.mask)
    }

    /// Each malformed training batch, named.
    static func badSteps() -> [(String, FastStepInputs)] {
        let ok = inputs()
        var out: [(String, FastStepInputs)] = []
        func bad(_ what: String, _ edit: (inout FastStepInputs) -> Void) { var i = ok; edit(&i); out.append((what, i)) }
        bad("empty batch") { $0.labels = []; $0.x0 = []; $0.noiseS = []; $0.noiseT = []; $0.sigmaS = []; $0.mask = [] }
        bad("short x0") { $0.x0.removeLast() }
        bad("long noise_s") { $0.noiseS.append(0) }
        bad("short noise_t") { $0.noiseT.removeLast() }
        bad("label above the null label") { $0.labels[0] = cfg.numClasses + 1 }
        bad("negative label") { $0.labels[1] = -1 }
        bad("sigma count") { $0.sigmaS.append(1) }
        bad("zero sigma") { $0.sigmaS[0] = 0 }
        bad("negative sigma") { $0.sigmaS[0] = -1 }
        bad("NaN sigma") { $0.sigmaS[1] = .nan }
        bad("infinite sigma") { $0.sigmaS[1] = .infinity }
        bad("mask rows") { $0.mask.removeLast() }
        bad("mask row length") { $0.mask[0].append(1) }
        bad("mask value") { $0.mask[0][0] = 2 }
        bad("unequal visible counts") { $0.mask[0][$0.mask[0].firstIndex(of: 0)!] = 1 }
        bad("nothing visible") { $0.mask = $0.mask.map { $0.map { _ in 1 } } }
        return out
    }

    @Test func goodBatchAndNullLabelPass() throws {
        var I = Self.inputs()
        I.labels[0] = Self.cfg.numClasses
        _ = try Self.model().forwardBackward(I)
    }

    @Test func trainingStepsThrow() {
        let m = Self.model()
        for (what, I) in Self.badSteps() {
            #expect(throws: ConfigError.self, "forwardBackward: \(what)") { try m.forwardBackward(I) }
            #expect(throws: ConfigError.self, "trainStep: \(what)") { try m.trainStep(I) }
            #expect(throws: ConfigError.self, "trainStepFindingScale: \(what)") { try m.trainStepFindingScale(I) }
        }
    }

    @Test func denoiserAndSamplerThrow() {
        let m = Self.model(), I = Self.inputs(), y = I.labels
        #expect(throws: ConfigError.self, "denoise accepted x0 one element short") { try m.denoise(Array(I.x0.dropLast()), sigma: 1, labels: y) }
        #expect(throws: ConfigError.self, "denoise accepted sigma 0") { try m.denoise(I.x0, sigma: 0, labels: y) }
        #expect(throws: ConfigError.self, "denoise accepted sigma NaN") { try m.denoise(I.x0, sigma: .nan, labels: y) }
        #expect(throws: ConfigError.self, "denoise accepted one sigma for two samples") { try m.denoise(I.x0, sigmas: [1], labels: y) }
        #expect(throws: ConfigError.self, "denoise accepted a label past the null label") { try m.denoise(I.x0, sigma: 1, labels: [y[0], Self.cfg.numClasses + 1]) }
        #expect(throws: ConfigError.self, "denoise accepted an empty batch") { try m.denoise([], sigma: 1, labels: []) }
        let sig = HeunSampler.sigmas(steps: 3, sigmaMin: 0.002, sigmaMax: 80, rho: 7)
        #expect(throws: ConfigError.self, "sample accepted x_init one element short") { try m.sample(xInit: Array(I.x0.dropLast()), labels: y, sigmas: sig, cfgScale: nil) }
        #expect(throws: ConfigError.self, "sample accepted a negative label") { try m.sample(xInit: I.x0, labels: [-1, 0], sigmas: sig, cfgScale: 1.5) }
        #expect(throws: ConfigError.self, "sample accepted a negative sigma") { try m.sample(xInit: I.x0, labels: y, sigmas: [80, -1, 0], cfgScale: nil) }
        #expect(throws: ConfigError.self, "sample accepted a NaN sigma") { try m.sample(xInit: I.x0, labels: y, sigmas: [80, 1, .nan], cfgScale: nil) }
        #expect(throws: ConfigError.self, "sample accepted no sigmas") { try m.sample(xInit: I.x0, labels: y, sigmas: [], cfgScale: nil) }
    }

    @Test func plainDiTStepThrows() {
        let cfg = Self.cfg, I = Self.inputs()
        let m = FastModel.plainDiT(cfg, precision: .fp32, parameters: PlainDiT.randomParameters(cfg, seed: 3))
        let ok = FastDiTInputs(x0: I.x0, labels: I.labels, sigma: I.sigmaS, noise: I.noiseS)
        var bad: [FastDiTInputs] = []
        func edit(_ f: (inout FastDiTInputs) -> Void) { var i = ok; f(&i); bad.append(i) }
        edit { $0.noise.removeLast() }
        edit { $0.x0.append(0) }
        edit { $0.labels[0] = cfg.numClasses + 1 }
        edit { $0.sigma[0] = 0 }
        edit { $0.sigma = [1] }
        edit { $0.labels = []; $0.x0 = []; $0.noise = []; $0.sigma = [] }
        for (i, b) in bad.enumerated() { #expect(throws: ConfigError.self, "plain DiT case \(i)") { try m.ditTrainStep(b) } }
        #expect(throws: Never.self, "the plain DiT step threw on valid inputs") { try m.ditTrainStep(ok) }
    }

    /// Loading a tensor that is not there (or of the wrong size), and a training step on a
    /// forward-and-backward-only model, throw instead of trapping.
    @Test func loadAndForwardOnlyModelThrow() throws {
        let cfg = Self.cfg
        let m = FastModel(cfg, precision: .fp32, forwardBackwardOnly: ())
        #expect(throws: ConfigError.self, "load accepted an unknown key") { try m.load("no.such.weight", [1]) }
        #expect(throws: ConfigError.self, "load accepted cls_token with 2 values") { try m.load("cls_token", [1, 2]) }
        #expect(throws: ConfigError.self, "load accepted an empty teacher cls_token") { try m.load("cls_token", teacher: true, []) }
        try m.load("cls_token", Array(repeating: 0.5, count: cfg.hiddenSize))
        #expect(throws: ConfigError.self, "a forward-and-backward-only model took a training step") { try m.trainStep(Self.inputs()) }
        #expect(throws: ConfigError.self, "a forward-and-backward-only model took a training step (finding the scale)") { try m.trainStepFindingScale(Self.inputs()) }
    }
}
