import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast


/// Options of an SD-DiT training run on the synthetic dataset (`oracle train`).
public struct TrainOptions: Sendable {
    /// Model and optimizer (`lr`, `mask_ratio`, ... of the config are used).
    public var config: ModelConfig
    public var precision: FastPrecision = .fp32
    /// Length of the run: the EMA cosine schedule spans it.
    public var steps: Int = 300
    public var batch: Int = 32
    /// Parameters' init and the per-step draws (data order, sigma, noise, mask).
    public var seed: UInt64 = 0
    /// The synthetic dataset's seed (templates, train and held-out splits, evaluation noise).
    public var dataSeed: UInt64 = 0
    /// L = L_G + w (L_D^cls + L_D^patch); 0 is the "no discriminative loss" ablation.
    public var discriminativeWeight: Double = 1
    /// Probability that a training label is replaced by the null label (classifier-free guidance).
    public var labelDropout: Double = 0.1
    /// tau_T warm-up length (default: a tenth of the run).
    public var warmupSteps: Int? = nil
    public var trainSize = 2048, heldOutSize = 256
    public var initMode: Initialization.Mode = .dit

    public init(config: ModelConfig) { self.config = config }
    public var warmup: Int { warmupSteps ?? max(steps / 10, 1) }

    public func validate() throws {
        func need(_ ok: Bool, _ m: String) throws { if !ok { throw ConfigError(m) } }
        try config.validate()
        try need(steps >= 1, "--steps must be at least 1, found \(steps)")
        try need(batch >= 1, "--batch must be at least 1, found \(batch)")
        try need(discriminativeWeight >= 0 && discriminativeWeight.isFinite, "the discriminative weight must be >= 0")
        try need(labelDropout >= 0 && labelDropout <= 1, "--label-dropout must lie in [0, 1], found \(labelDropout)")
        try need(warmup >= 1, "--warmup must be at least 1")
        try need(trainSize >= 1 && heldOutSize >= 1, "dataset sizes must be positive")
    }

    /// What a checkpoint records to rebuild these options (config JSON key "train").
    var json: [String: Any] {
        ["precision": precision.rawValue, "steps": steps, "batch": batch, "seed": String(seed), "data_seed": String(dataSeed),
         "discriminative_weight": discriminativeWeight, "label_dropout": labelDropout, "warmup_steps": warmup,
         "train_size": trainSize, "held_out_size": heldOutSize, "init_mode": initMode.rawValue, "dataset": "synthetic"]
    }
}

/// One step's outcome, as the progress bar shows it.
public struct TrainRecord: Sendable {
    public var step: Int                 // 1-based: steps done after this one
    public var generative: Double, disCls: Double, disPatch: Double, total: Double
    public var skipped: Bool
    public var lossScale: Float
}

/// A non-finite value met with `--anomaly`: the step and the fast path's report.
public struct TrainAnomaly: Error, CustomStringConvertible {
    public var step: Int
    public var error: NonFiniteError
    public var explanation: String
    public var description: String { "step \(step): \(error.description)\nwhy: \(explanation)" }
}

/// SD-DiT training on the fast path: minibatch k is a pure function of (seed, k), so a run
/// resumed from a checkpoint reproduces the uninterrupted run bit for bit.
public final class Trainer {
    public let options: TrainOptions
    public let data: SyntheticData
    public let model: FastModel
    /// Steps done so far.
    public private(set) var step = 0
    /// Per step: L_G, L_D^cls, L_D^patch, total, skipped (0/1), loss scale, and the
    /// update-to-weight ratio ||theta_k - theta_(k-1)|| / ||theta_(k-1)|| over the trainable
    /// student parameters (0 on a skipped step; NaN in rows of checkpoints that predate it).
    public private(set) var history: [[Double]] = []
    public static let historyColumns = 7
    /// (step, held-out generative loss).
    public private(set) var evals: [(step: Int, loss: Double)] = []
    /// The quiet-failure monitor (GradScaler collapse), on unless `watchQuietFailures` is false.
    public let quiet = QuietFailureMonitor()
    /// The stalled-training monitor (updates that vanish while the loss stays finite).
    public let stall = StallMonitor()
    public var watchQuietFailures = true

    public init(_ o: TrainOptions) throws {
        try o.validate()
        options = o
        data = SyntheticData(o.config, seed: o.dataSeed, trainSize: o.trainSize, heldOutSize: o.heldOutSize)
        let P: Parameters<Double> = Initialization.parameters(o.config, mode: o.initMode, seed: o.seed)
        // teacher = a copy of the student, centers zero (SPEC §5)
        model = FastModel(o.config, precision: o.precision, student: P.tensors, teacher: nil)
        model.discriminativeWeight = Float(o.discriminativeWeight)
    }

    init(options o: TrainOptions, model m: FastModel, step s: Int, history h: [[Double]], evals e: [(Int, Double)]) {
        options = o; model = m; step = s; history = h; evals = e.map { (step: $0.0, loss: $0.1) }
        data = SyntheticData(o.config, seed: o.dataSeed, trainSize: o.trainSize, heldOutSize: o.heldOutSize)
        model.discriminativeWeight = Float(o.discriminativeWeight)
    }

    /// Minibatch `k` (0-based): training examples drawn with replacement, labels (null with
    /// probability `labelDropout`), ln sigma ~ N(P_mean, P_std), unit noises, a MaskDiT mask.
    public func batch(_ k: Int) -> FastStepInputs {
        let cfg = options.config, N = options.batch, per = data.sampleCount
        var rng = SeededRandom(seed: SeededRandom.mix(options.seed, UInt64(k)))
        var x0: [Double] = [], labels: [Int] = []
        x0.reserveCapacity(N * per)
        for _ in 0..<N {
            let i = Int(rng.next() % UInt64(data.train.count))
            x0 += data.train[i]
            labels.append(rng.uniform() < options.labelDropout ? cfg.numClasses : data.trainLabels[i])
        }
        let sigma = (0..<N).map { _ in Initialization.trainingSigma(cfg, &rng) }
        let nS = rng.normals(N * per), nT = rng.normals(N * per)
        let V = cfg.visibleCount(maskRatio: cfg.maskRatio)
        let mask = (0..<N).map { _ in Initialization.maskRow(tokens: cfg.tokens, visible: V, &rng) }
        return FastStepInputs(x0: x0, labels: labels, sigmaS: sigma, noiseS: nS, noiseT: nT, mask: mask)
    }

    /// The schedules of SPEC §5 at step k (DECISIONS 3).
    public func tauT(_ k: Int) -> Double { Schedules.tauT(step: k, warmupSteps: options.warmup) }
    public func emaBeta(_ k: Int) -> Double { Schedules.emaBeta(step: k, totalSteps: options.steps) }

    /// One training step (GradScaler semantics in fp16 modes: a step with a non-finite
    /// gradient is skipped and the scale backs off).
    @discardableResult
    public func trainStep() throws -> TrainRecord {
        let I = batch(step)
        let r: FastStepResult
        let before = model.trainableSnapshot()
        do { r = try model.trainStep(I, tauT: tauT(step), emaBeta: emaBeta(step)) } catch let e as NonFiniteError {
            throw TrainAnomaly(step: step + 1, error: e, explanation: e.explanation(halfMax: options.precision.isFP16 ? 65504 : nil))
        }
        step += 1
        let l = r.losses
        let update = UpdateRatios(model, before: before)
        let rec = TrainRecord(step: step, generative: l[LossName.generative]!, disCls: l[LossName.disCls]!,
                              disPatch: l[LossName.disPatch]!, total: l[LossName.total]!, skipped: r.skipped, lossScale: r.lossScale)
        history.append([rec.generative, rec.disCls, rec.disPatch, rec.total, rec.skipped ? 1 : 0, Double(rec.lossScale), update.total])
        if watchQuietFailures {
            _ = try quiet.observe(self, rec, inputs: I)
            _ = stall.observe(self, update)
        }
        return rec
    }

    /// The 8 quantiles (j + 1/2)/8 of the standard normal: the held-out evaluation's noise levels
    /// are exp(P_mean + P_std z_j), sample i at level i mod 8.
    static let normalQuantiles8 = [-1.5341205443525463, -0.8871465590189700, -0.4887764111146695, -0.1573106846101707,
                                   0.1573106846101707, 0.4887764111146695, 0.8871465590189700, 1.5341205443525463]

    /// Held-out generative loss: L_G (EDM weighting, no mask: the sampler's denoiser) over the
    /// held-out split, each sample at a fixed sigma with fixed noise (from the data seed), so
    /// numbers compare across runs, precisions and ablations. Runs on a copy of the student.
    public func heldOutLoss() throws -> Double {
        let cfg = options.config, per = data.sampleCount
        let m = FastModel(cfg, precision: options.precision, student: model.parameters(), teacher: nil)
        var rng = SeededRandom(seed: SeededRandom.mix(options.dataSeed, 0xE7A1))
        let n = data.heldOut.count, chunk = 64
        var sum = 0.0
        var start = 0
        while start < n {
            let idx = Array(start..<min(start + chunk, n))
            let sig = idx.map { exp(cfg.pMean + cfg.pStd * Self.normalQuantiles8[$0 % 8]) }
            var x0: [Double] = [], x: [Double] = []
            for (j, i) in idx.enumerated() {
                x0 += data.heldOut[i]
                let e = rng.normals(per)
                x += (0..<per).map { data.heldOut[i][$0] + sig[j] * e[$0] }
            }
            let D = try m.denoise(x, sigmas: sig, labels: idx.map { data.heldOutLabels[$0] })
            for (j, _) in idx.enumerated() {
                let lam = m.edmWeight(sig[j])
                for q in 0..<per { let d = D[j * per + q] - x0[j * per + q]; sum += lam * d * d }
            }
            start += chunk
        }
        return sum / Double(n * per)
    }

    /// Records a held-out evaluation at the current step.
    @discardableResult
    public func evaluate() throws -> Double {
        let l = try heldOutLoss()
        if let last = evals.last, last.step == step { evals[evals.count - 1].loss = l } else { evals.append((step, l)) }
        return l
    }

    /// Mean of history column `c` over steps in `range` (0-based step indices).
    public func mean(_ c: Int, _ range: Range<Int>) -> Double {
        let r = range.clamped(to: 0..<history.count)
        guard !r.isEmpty else { return .nan }
        return r.reduce(0.0) { $0 + history[$1][c] } / Double(r.count)
    }

    /// Column c over the steps in `range` as a window line prints it (`WindowMean`).
    public func windowMean(_ c: Int, _ range: Range<Int>) -> WindowMean {
        let r = range.clamped(to: 0..<history.count)
        return WindowMean(r.map { history[$0][c] })
    }
}

/// The mean of a window's finite values and the count of the others: a window with one
/// skipped (inf) step reads "0.5800 (1 inf)", never "inf"; one with no finite value reads
/// "n/a (20 non-finite)".
public struct WindowMean: CustomStringConvertible, Sendable {
    public let mean: Double, finite: Int, nonFinite: Int
    public init(_ xs: [Double]) {
        let f = xs.filter(\.isFinite)
        finite = f.count; nonFinite = xs.count - f.count
        mean = f.isEmpty ? .nan : f.reduce(0, +) / Double(f.count)
    }
    public var description: String {
        if finite == 0 { return "n/a (\(nonFinite) non-finite)" }
        return String(format: "%.4f", mean) + (nonFinite > 0 ? " (\(nonFinite) inf)" : "")
    }
}

// MARK: - Checkpoints (SPEC §7 layout plus /train)

extension Trainer {
    /// Writes the SPEC §7 layout (config, /params, /teacher, /inputs: the next step's minibatch
    /// and the centers, so the file is a complete one-step setup) plus /train: AdamW moments,
    /// step counts, the GradScaler's state and the loss / evaluation history. Atomic.
    public func writeCheckpoint(_ path: String) throws {
        let o = options, cfg = o.config, N = o.batch, K = cfg.headOutDim
        var ds: [String: NamedTensor] = [:], ints: [String: ([Int64], [Int])] = [:]
        for (k, v) in model.parameters() { ds["params/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: .float32) }
        for (k, v) in model.parameters(teacher: true) { ds["teacher/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: .float32) }
        let I = batch(step), img = [N, cfg.inChannels, cfg.inputSize, cfg.inputSize]
        ds["inputs/x0"] = NamedTensor(shape: img, values: I.x0, precision: .float64)
        ds["inputs/noise_s"] = NamedTensor(shape: img, values: I.noiseS, precision: .float64)
        ds["inputs/noise_t"] = NamedTensor(shape: img, values: I.noiseT, precision: .float64)
        ds["inputs/sigma_s"] = NamedTensor(shape: [N], values: I.sigmaS, precision: .float64)
        ds["inputs/center_cls"] = NamedTensor(shape: [K], values: model.centerCls.map(Double.init), precision: .float32)
        ds["inputs/center_patch"] = NamedTensor(shape: [K], values: model.centerPatch.map(Double.init), precision: .float32)
        ints["inputs/labels"] = (I.labels.map(Int64.init), [N])
        ints["inputs/mask"] = (I.mask.flatMap { $0 }.map(Int64.init), [N, cfg.tokens])
        ints["inputs/step"] = ([Int64(step)], [])
        let st = model.optimizerState()
        let shapes = Dictionary(uniqueKeysWithValues: cfg.studentParameters.map { ($0.key, $0.shape) })
        for (k, v) in st.m { ds["train/adam_m/" + k] = NamedTensor(shape: shapes[k]!, values: v.map(Double.init), precision: .float32) }
        for (k, v) in st.v { ds["train/adam_v/" + k] = NamedTensor(shape: shapes[k]!, values: v.map(Double.init), precision: .float32) }
        ints["train/step"] = ([Int64(step)], [])
        ints["train/adam_step"] = ([Int64(st.step)], [])
        ints["train/scaler_clean_steps"] = ([Int64(model.scaler.cleanSteps)], [])
        ints["train/scaler_skipped_steps"] = ([Int64(model.scaler.skippedSteps)], [])
        ds["train/loss_scale"] = NamedTensor(shape: [], values: [Double(model.scaler.scale)], precision: .float32)
        if !history.isEmpty {
            ds["train/history"] = NamedTensor(shape: [history.count, Self.historyColumns], values: history.flatMap { $0 }, precision: .float64)
        }
        if !evals.isEmpty { ds["train/eval"] = NamedTensor(shape: [evals.count, 2], values: evals.flatMap { [Double($0.step), $0.loss] }, precision: .float64) }
        var c = cfg
        c.tauT = tauT(step); c.emaBeta = emaBeta(step)   // the schedules' values for the recorded step
        var extra: [String: Any] = ["generator": "sddit-oracle train", "train": o.json, "batch_size": N]
        if let q = quiet.failure { extra["quiet_failure"] = q.json }
        if let q = stall.stall { extra["stalled"] = q.json }
        try ExchangeWriter.write(path, config: c, configExtra: extra, datasets: ds, integers: ints)
    }

    /// A trainer restored from a checkpoint; `steps` extends (or shortens) the run's length,
    /// which changes the EMA schedule from what the original run would have used.
    public static func resume(_ path: String, steps: Int? = nil) throws -> Trainer {
        let f = try ExchangeFile.read(path)
        func fail(_ s: String) -> ExchangeError { ExchangeError("\(path): \(s)") }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(f.configJSON.utf8)) as? [String: Any],
              let t = obj["train"] as? [String: Any] else {
            throw fail("not a training checkpoint (the config JSON has no \"train\" object; write one with oracle train --checkpoint)")
        }
        func num(_ k: String) throws -> Double {
            guard let v = t[k] as? NSNumber else { throw fail("config \"train\": key '\(k)' is missing or not a number") }
            return v.doubleValue
        }
        func u64(_ k: String) throws -> UInt64 {
            guard let s = t[k] as? String, let v = UInt64(s) else { throw fail("config \"train\": key '\(k)' is missing or not a seed string") }
            return v
        }
        var cfg = f.config
        cfg.tauT = ModelConfig.tiny.tauT; cfg.emaBeta = ModelConfig.tiny.emaBeta   // per-step values come from the schedules
        var o = TrainOptions(config: cfg)
        guard let ps = t["precision"] as? String, let p = FastPrecision(rawValue: ps) else { throw fail("config \"train\": bad 'precision'") }
        o.precision = p
        o.steps = Int(try num("steps")); o.batch = Int(try num("batch"))
        o.seed = try u64("seed"); o.dataSeed = try u64("data_seed")
        o.discriminativeWeight = try num("discriminative_weight"); o.labelDropout = try num("label_dropout")
        o.warmupSteps = Int(try num("warmup_steps"))
        o.trainSize = Int(try num("train_size")); o.heldOutSize = Int(try num("held_out_size"))
        if let im = t["init_mode"] as? String, let m = Initialization.Mode(rawValue: im) { o.initMode = m }
        if let s = steps { o.steps = s }
        do { try o.validate() } catch { throw fail("\(error)") }
        let student = try f.parameters("params", cfg.studentParameters).tensors
        let teacher = try f.parameters("teacher", cfg.teacherParameters).tensors
        let K = cfg.headOutDim
        let cc = try f.tensor("inputs/center_cls", shape: [K]).data, cp = try f.tensor("inputs/center_patch", shape: [K]).data
        let m = FastModel(cfg, precision: p, student: student, teacher: teacher, centerCls: cc, centerPatch: cp)
        var am: [String: [Float]] = [:], av: [String: [Float]] = [:]
        for s in cfg.studentParameters where !s.frozen {
            am[s.key] = try f.tensor("train/adam_m/" + s.key, shape: s.shape).data.map { Float($0) }
            av[s.key] = try f.tensor("train/adam_v/" + s.key, shape: s.shape).data.map { Float($0) }
        }
        let step = try f.ints("train/step", shape: [])[0]
        try m.restoreOptimizer(m: am, v: av, step: try f.ints("train/adam_step", shape: [])[0])
        m.scaler.scale = Float(try f.tensor("train/loss_scale", shape: []).data[0])
        m.scaler.cleanSteps = try f.ints("train/scaler_clean_steps", shape: [])[0]
        m.scaler.skippedSteps = try f.ints("train/scaler_skipped_steps", shape: [])[0]
        var h: [[Double]] = [], e: [(Int, Double)] = []
        if let hd = f.datasets["train/history"], hd.shape.count == 2, hd.shape[1] == 6 || hd.shape[1] == Self.historyColumns {
            let w = hd.shape[1]   // 6 columns: written before the update ratio was recorded
            h = (0..<hd.shape[0]).map { Array(hd.values[($0 * w)..<($0 * w + w)]) + (w == 6 ? [.nan] : []) }
        }
        if let ed = f.datasets["train/eval"], ed.shape.count == 2, ed.shape[1] == 2 {
            e = (0..<ed.shape[0]).map { (Int(ed.values[$0 * 2]), ed.values[$0 * 2 + 1]) }
        }
        guard h.count == step else { throw fail("/train/history has \(h.count) rows, expected one per step (\(step))") }
        let trainer = Trainer(options: o, model: m, step: step, history: h, evals: e)
        if let q = obj["quiet_failure"] as? [String: Any], let qs = q["step"] as? Int {
            let z = (q["zeroed"] as? [[String: Any]] ?? []).compactMap { d in (d["tensor"] as? String).map { ($0, d["fraction"] as? Double ?? 0) } }
            trainer.quiet.restore(QuietFailure(step: qs, scale: Float(q["scale"] as? Double ?? 0), initialScale: Float(q["initial_scale"] as? Double ?? 0),
                                         reason: q["reason"] as? String ?? "", zeroed: z))
        }
        if let q = obj["stalled"] as? [String: Any], let qs = q["step"] as? Int {
            trainer.stall.restore(Stall(step: qs, ratio: q["ratio"] as? Double ?? 0, reference: q["reference"] as? Double ?? 0,
                                        window: q["window"] as? Int ?? StallMonitor.window, skipped: q["skipped"] as? Int ?? 0,
                                        stillTensors: (q["still"] as? [[String: Any]] ?? []).compactMap { d in
                                            (d["tensor"] as? String).map { ($0, d["unchanged"] as? Double ?? 0) } },
                                        lossBefore: q["loss_before"] as? Double ?? .nan, lossNow: q["loss_now"] as? Double ?? .nan))
        }
        return trainer
    }
}
