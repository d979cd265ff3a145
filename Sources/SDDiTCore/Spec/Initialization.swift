import RealModule

// Deterministic parameters and inputs from a seed.
public enum Initialization {
    public enum Mode: String, CaseIterable, Sendable {
        /// DiT / MaskDiT / DINO init: xavier-uniform linears, zero adaLN and final layer.
        case dit
        /// Every tensor random and non-zero (tests: zero-initialized gates hide bugs).
        case random
    }

    public static func parameters<T: RefScalar>(_ cfg: ModelConfig, mode: Mode, seed: UInt64) -> Parameters<T> {
        var P = Parameters<T>()
        var stream = Stream(cfg, mode: mode, seed: seed)
        while let (s, v) = stream.next() {
            switch s.key {
            case "pos_embed": P[s.key] = SinCosPosEmbed.table(width: cfg.hiddenSize, grid: cfg.grid, clsRow: true)
            case "decoder_pos_embed": P[s.key] = SinCosPosEmbed.table(width: cfg.decoderHiddenSize, grid: cfg.grid, clsRow: false)
            default: P[s.key] = Tensor(shape: s.shape, data: v!.map { T($0) })
            }
        }
        return P
    }

    /// The student's tensors one at a time, in `cfg.studentParameters` order, as `parameters`
    /// draws them (nil for the fixed sin-cos tables, which the caller computes in its own type):
    /// a caller that keeps only its own copy needs one Double tensor of memory, not a model.
    public struct Stream: IteratorProtocol {
        let cfg: ModelConfig, mode: Mode
        var rng: SeededRandom, index = 0
        public init(_ cfg: ModelConfig, mode: Mode, seed: UInt64) { self.cfg = cfg; self.mode = mode; rng = SeededRandom(seed: seed) }

        public mutating func next() -> (spec: ParameterSpec, values: [Double]?)? {
            guard index < cfg.studentParameters.count else { return nil }
            let s = cfg.studentParameters[index]
            index += 1
            let fanIn = s.shape.dropFirst().reduce(1, *), fanOut = s.shape[0]
            switch s.key {
            case "pos_embed", "decoder_pos_embed": return (s, nil)
            case "head.last_layer.weight_g": return (s, Array(repeating: 1, count: s.count))
            default:
                switch mode {
                case .random:
                    return (s, rng.normals(s.count, std: randomStd(s)))
                case .dit:
                    return (s, ditInit(s, fanIn: fanIn, fanOut: fanOut, &rng))
                }
            }
        }
    }

    static func ditInit(_ s: ParameterSpec, fanIn: Int, fanOut: Int, _ rng: inout SeededRandom) -> [Double] {
        let k = s.key
        let zeros = [Double](repeating: 0, count: s.count)
        func uniform(_ bound: Double) -> [Double] { (0..<s.count).map { _ in (2 * rng.uniform() - 1) * bound } }
        if k.hasSuffix(".bias") { return zeros }
        if k.contains("adaLN_modulation") || k == "final_layer.linear.weight" { return zeros }
        if k == "y_embedder.embedding_table.weight" || k.hasPrefix("t_embedder.") || k == "cls_token"
            || k.hasPrefix("head.mlp.") {
            return rng.normals(s.count, std: 0.02)
        }
        if k == "head.last_layer.weight_v" { return uniform(1 / Double(fanIn).squareRoot()) }
        return uniform((6 / Double(fanIn + fanOut)).squareRoot())   // xavier-uniform (x_embedder on its [D, C p p] view)
    }

    /// Random step inputs: x0 ~ 0.5 N(0, 1), ln sigma_S ~ N(P_mean, P_std), unit noises,
    /// MaskDiT-style mask (V = int(T (1 - ratio)) random visible tokens), random centers.
    public static func inputs<T: RefScalar>(_ cfg: ModelConfig, batch N: Int, maskRatio: Double, seed: UInt64,
                                            randomCenters: Bool = true) -> StepInputs<T> {
        var rng = SeededRandom(seed: seed)
        let img = [N, cfg.inChannels, cfg.inputSize, cfg.inputSize], count = img.reduce(1, *)
        let x0 = Tensor(shape: img, data: rng.normals(count, std: 0.5).map { T($0) })
        let labels = (0..<N).map { _ in Int(rng.next() % UInt64(cfg.numClasses)) }
        let sigma = (0..<N).map { _ in T(trainingSigma(cfg, &rng)) }
        let nS = Tensor(shape: img, data: rng.normals(count).map { T($0) })
        let nT = Tensor(shape: img, data: rng.normals(count).map { T($0) })
        let V = cfg.visibleCount(maskRatio: maskRatio)
        let mask = (0..<N).map { _ in maskRow(tokens: cfg.tokens, visible: V, &rng) }
        let K = cfg.headOutDim
        let cc = randomCenters ? rng.normals(K, std: 0.1) : [Double](repeating: 0, count: K)
        let cp = randomCenters ? rng.normals(K, std: 0.1) : [Double](repeating: 0, count: K)
        return StepInputs(x0: x0, labels: labels, sigmaS: sigma, noiseS: nS, noiseT: nT, mask: mask,
                          centerCls: Tensor(shape: [K], data: cc.map { T($0) }),
                          centerPatch: Tensor(shape: [K], data: cp.map { T($0) }))
    }

    /// ln sigma ~ N(P_mean, P_std) (SPEC §4): one training noise level.
    public static func trainingSigma(_ cfg: ModelConfig, _ rng: inout SeededRandom) -> Double {
        Double.exp(cfg.pMean + cfg.pStd * rng.normal())
    }

    /// MaskDiT's mask row (SPEC §2.4): V tokens of T visible (0), chosen by a random
    /// permutation; the rest hidden (1).
    public static func maskRow(tokens: Int, visible V: Int, _ rng: inout SeededRandom) -> [Int] {
        var row = [Int](repeating: 1, count: tokens)
        for t in rng.permutation(tokens).prefix(V) { row[t] = 0 }
        return row
    }

    /// The `.random` rule (every tensor non-zero; also the plain DiT of `oracle bench` and the
    /// peer): biases N(0, 0.05^2), weights N(0, clamp(fan_in^-1/2, 0.02, 0.2)^2).
    public static func randomStd(_ s: ParameterSpec) -> Double {
        let fanIn = s.shape.dropFirst().reduce(1, *)
        return s.key.hasSuffix("bias") ? 0.05 : min(0.2, max(0.02, 1 / Double(fanIn).squareRoot()))
    }
}
