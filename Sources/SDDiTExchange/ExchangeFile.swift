import Foundation
import HDF5IO
import SDDiTCore


/// One clear line naming the file, the dataset or key, what was expected and what was found.
public struct ExchangeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public let exchangeFormat = "sddit-oracle/1"

/// A file in the SPEC §7 layout: its config and every dataset by path, read whole, or (for a
/// run too large to hold twice: `oracle diff` at XL/2) its setup only, the results read one
/// at a time when asked for (`dataset(_:)`).
public struct ExchangeFile: Sendable {
    public let path: String
    public let config: ModelConfig
    public let configJSON: String
    /// Datasets by path without the leading slash ("params/pos_embed", "losses/total"): every
    /// one, or with `resultsOnDemand` the setup's (`isSetup`), /params, /sampler/sigmas and the integers.
    public let datasets: [String: NamedTensor]
    /// Every dataset's shape and precision, whether or not its values are in `datasets`.
    public let index: [String: (shape: [Int], precision: Precision)]
    /// Exact values of integer datasets (labels, mask, step).
    public let integers: [String: [Int64]]
    /// `cfg_scale` from the file's or /sampler's attributes (or the config JSON).
    public let cfgScale: Double?
    /// The precision mode the file says its run was made in (root attribute `precision_mode`,
    /// or the config key of that name; docs/DECISIONS.md 42), if it says.
    public let declaredMode: PrecisionMode?
    /// Config keys the file leaves out whose defaults were taken (`ModelConfig.defaultedKeys`).
    public let defaultedConfigKeys: [String]
    let reader: OnDemandReader?

    public static func read(_ path: String, resultsOnDemand: Bool = false) throws -> ExchangeFile {
        let f: HDF5File
        do { f = try HDF5File.open(path) } catch { throw ExchangeError("\(error)") }
        var keepOpen = false
        defer { if !keepOpen { try? f.close() } }
        func fail(_ s: String) -> ExchangeError { ExchangeError("\(path): \(s)") }
        guard let format = try f.stringAttribute("format") else {
            throw fail("root attribute 'format' is missing (expected \"\(exchangeFormat)\"); not an sddit-oracle exchange file")
        }
        guard format == exchangeFormat else {
            throw fail("root attribute 'format' is \"\(format)\", expected \"\(exchangeFormat)\"")
        }
        guard let json = try f.stringAttribute("config") else { throw fail("root attribute 'config' (JSON) is missing") }
        let cfg: ModelConfig
        do {
            cfg = try ModelConfig(json: json)
            // the least any run of it needs: the reference's step at batch 1
            try cfg.checkMemory(need: cfg.estimatedReferenceStepBytes(batch: 1, visible: cfg.visibleCount(maskRatio: cfg.maskRatio), scalarBytes: 8),
                                what: "a training step at batch 1", available: Double(ProcessInfo.processInfo.physicalMemory))
        } catch { throw fail("\(error)") }
        var declared: PrecisionMode? = nil
        var modeText = try f.stringAttribute("precision_mode")
        if modeText == nil, let data = json.data(using: .utf8),
           case .object(let o)? = try? JSONDecoder().decode(JSONValue.self, from: data), case .string(let m)? = o["precision_mode"] {
            modeText = m
        }
        if let m = modeText {
            guard let pm = PrecisionMode(declared: m) else {
                throw fail("precision_mode \"\(m)\" is not a mode the oracle knows (\(PrecisionMode.validNames))")
            }
            declared = pm
        }
        var ds: [String: NamedTensor] = [:], ints: [String: [Int64]] = [:]
        var index: [String: (shape: [Int], precision: Precision)] = [:]
        /// float32 datasets holding bfloat16 values say so (attribute dtype = "bfloat16"), as
        /// tools/sddit_h5.py writes a bf16 tensor (HDF5 has no bfloat16).
        func declaredPrecision(_ p: String, _ t: HDF5ElementType) throws -> Precision {
            let prec = precision(of: t)
            guard prec == .float32, !isSetup(p), let dt = try f.stringAttribute("dtype", of: p) else { return prec }
            switch dt.lowercased() {
            case "bfloat16", "bf16", "torch.bfloat16": return .bfloat16
            case "float32", "torch.float32": return .float32
            default: throw fail("/\(p): attribute dtype \"\(dt)\" on a float32 dataset (expected \"bfloat16\" or none)")
            }
        }
        for p in try f.datasetPaths() {
            if resultsOnDemand, !(isSetup(p) || p.hasPrefix("params/") || p == "sampler/sigmas") {
                let info: (shape: [Int], elementType: HDF5ElementType)
                do { info = try f.info(p) } catch { throw ExchangeError("\(error)") }
                if !info.elementType.isInteger {   // a result: its values when asked for
                    index[p] = (info.shape, try declaredPrecision(p, info.elementType))
                    continue
                }
            }
            let d: HDF5Dataset
            do { d = try f.read(p) } catch { throw ExchangeError("\(error)") }
            let prec = try declaredPrecision(p, d.elementType)
            index[p] = (d.shape, prec)
            ds[p] = NamedTensor(shape: d.shape, values: d.doubles, precision: prec)
            if let i = d.ints { ints[p] = i }
        }
        var scale = try f.doubleAttribute("cfg_scale")
        if scale == nil, f.exists("sampler") { scale = try f.doubleAttribute("cfg_scale", of: "sampler") }
        keepOpen = resultsOnDemand
        return ExchangeFile(path: path, config: cfg, configJSON: json, datasets: ds, index: index, integers: ints,
                            cfgScale: scale ?? cfg.cfgScale, declaredMode: declared,
                            defaultedConfigKeys: ModelConfig.defaultedKeys(json: json), reader: resultsOnDemand ? OnDemandReader(f) : nil)
    }

    static func precision(of t: HDF5ElementType) -> Precision {
        switch t {
        case .float64: return .float64
        case .float32: return .float32
        case .float16: return .float16
        default: return .integer
        }
    }

    /// A dataset's values: from `datasets`, or read from the file now (nil: the file has no
    /// such dataset). The last few read stay at hand, since the after-step rule asks for a
    /// gradient again after its comparison.
    public func dataset(_ p: String) throws -> NamedTensor? {
        if let d = datasets[p] { return d }
        guard let r = reader, let info = index[p] else { return nil }
        return try r.load(p, precision: info.precision)
    }

    func fail(_ s: String) -> ExchangeError { ExchangeError("\(path): \(s)") }

    /// A float dataset of the expected shape, finite.
    public func tensor(_ p: String, shape: [Int]) throws -> Tensor<Double> {
        guard let d = datasets[p] else { throw fail("dataset /\(p) is missing") }
        guard d.precision != .integer else { throw fail("/\(p): expected a float dataset, found an integer one") }
        guard d.shape == shape else { throw fail("/\(p): expected shape \(shape), found \(d.shape)") }
        if let i = d.values.firstIndex(where: { !$0.isFinite }) {
            throw fail("/\(p): non-finite value \(d.values[i]) at \(unravel(i, shape))")
        }
        return Tensor(shape: shape, data: d.values)
    }

    /// An integer dataset (int64, uint8, ...) of the expected shape.
    public func ints(_ p: String, shape: [Int]) throws -> [Int] {
        guard let d = datasets[p] else { throw fail("dataset /\(p) is missing") }
        guard d.shape == shape else { throw fail("/\(p): expected shape \(shape), found \(d.shape)") }
        guard let v = integers[p] else { throw fail("/\(p): expected an integer dataset, found \(d.precision.rawValue)") }
        return v.map { Int($0) }
    }

    public func has(group g: String) -> Bool { index.keys.contains { $0.hasPrefix(g + "/") } }

    /// Parameters of `specs` from group `g` ("params", "teacher", "after_step/params").
    public func parameters(_ g: String, _ specs: [ParameterSpec]) throws -> Parameters<Double> {
        var P = Parameters<Double>()
        for s in specs { P[s.key] = try tensor("\(g)/\(s.key)", shape: s.shape) }
        return P
    }

    public var hasTrainingStep: Bool { has(group: "inputs") }

    public func stepInputs() throws -> StepInputs<Double> {
        let cfg = config
        guard let x0d = datasets["inputs/x0"] else { throw fail("dataset /inputs/x0 is missing") }
        guard x0d.shape.count == 4, x0d.shape[0] >= 1 else {
            throw fail("/inputs/x0: expected shape [N, \(cfg.inChannels), \(cfg.inputSize), \(cfg.inputSize)], found \(x0d.shape)")
        }
        let N = x0d.shape[0], img = [N, cfg.inChannels, cfg.inputSize, cfg.inputSize], K = cfg.headOutDim
        let labels = try ints("inputs/labels", shape: [N])
        if let (i, y) = labels.enumerated().first(where: { $0.1 < 0 || $0.1 > cfg.numClasses }) {
            throw fail("/inputs/labels[\(i)] = \(y) is out of range 0...\(cfg.numClasses) (num_classes \(cfg.numClasses), the last is the null label)")
        }
        let sigma = try tensor("inputs/sigma_s", shape: [N]).data
        if let (i, s) = sigma.enumerated().first(where: { $0.1 <= 0 }) {
            throw fail("/inputs/sigma_s[\(i)] = \(s); sigma must be > 0")
        }
        let maskFlat = try ints("inputs/mask", shape: [N, cfg.tokens])
        let mask = (0..<N).map { Array(maskFlat[($0 * cfg.tokens)..<(($0 + 1) * cfg.tokens)]) }
        do { _ = try visibleIndices(mask: mask, tokens: cfg.tokens) } catch { throw fail("/inputs/mask: \(error)") }
        var step = 0
        if datasets["inputs/step"] != nil { step = try ints("inputs/step", shape: []).first ?? 0 }
        return StepInputs(x0: try tensor("inputs/x0", shape: img), labels: labels, sigmaS: sigma,
                          noiseS: try tensor("inputs/noise_s", shape: img), noiseT: try tensor("inputs/noise_t", shape: img),
                          mask: mask, centerCls: try tensor("inputs/center_cls", shape: [K]),
                          centerPatch: try tensor("inputs/center_patch", shape: [K]), step: step)
    }

    public var hasSampler: Bool { datasets["sampler/x_init"] != nil }

    public func samplerSetup() throws -> SamplerSetup {
        let cfg = config
        guard let xd = datasets["sampler/x_init"] else { throw fail("dataset /sampler/x_init is missing") }
        guard xd.shape.count == 4, xd.shape[0] >= 1 else {
            throw fail("/sampler/x_init: expected shape [N, \(cfg.inChannels), \(cfg.inputSize), \(cfg.inputSize)], found \(xd.shape)")
        }
        let N = xd.shape[0]
        let x = try tensor("sampler/x_init", shape: [N, cfg.inChannels, cfg.inputSize, cfg.inputSize])
        let labels = try ints("sampler/labels", shape: [N])
        if let (i, y) = labels.enumerated().first(where: { $0.1 < 0 || $0.1 > cfg.numClasses }) {
            throw fail("/sampler/labels[\(i)] = \(y) is out of range 0...\(cfg.numClasses)")
        }
        guard let s = datasets["sampler/sigmas"], s.shape.count == 1, s.shape[0] >= 3 else {
            throw fail("/sampler/sigmas: expected a vector of N+1 noise levels with N >= 2 steps (SPEC §6 divides by N-1), found shape \(datasets["sampler/sigmas"]?.shape ?? [])")
        }
        return SamplerSetup(xInit: x, labels: labels, steps: s.shape[0] - 1, cfgScale: cfgScale)
    }
}

/// The open file behind `ExchangeFile.dataset(_:)` and the last datasets it read.
final class OnDemandReader: @unchecked Sendable {
    let file: HDF5File
    let lock = NSLock()
    var recent: [(String, NamedTensor)] = []
    static let kept = 4
    init(_ f: HDF5File) { file = f }
    deinit { try? file.close() }

    func load(_ p: String, precision: Precision) throws -> NamedTensor {
        lock.lock(); defer { lock.unlock() }
        if let hit = recent.first(where: { $0.0 == p }) { return hit.1 }
        let d: HDF5Dataset
        do { d = try file.read(p) } catch { throw ExchangeError("\(error)") }
        let t = NamedTensor(shape: d.shape, values: d.doubles, precision: precision)
        recent.append((p, t))
        if recent.count > Self.kept { recent.removeFirst() }
        return t
    }
}
