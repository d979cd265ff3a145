import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTFast

/// The Heun sampler (SPEC §6) from a training checkpoint, its SPEC §7 file, and for the
/// synthetic dataset a comparison of the samples with the data (numbers and an SVG plot).
public struct SampleOptions: Sendable {
    public var steps = 18, rho = 7.0, sigmaMin = 0.002, sigmaMax = 80.0
    public var cfgScale: Double? = nil
    public var count = 64
    public var labels: [Int]? = nil
    public var seed: UInt64 = 0
    public var precision: FastPrecision? = nil
    public init() {}
}

public struct SampleResult: Sendable {
    public var config: ModelConfig
    public var precision: FastPrecision
    public var sigmas: [Double]
    public var xInit: [Double], labels: [Int]
    public var trajectory: [[Double]]
    public var out: [Double] { trajectory.last ?? xInit }
    public var shape: [Int] { [labels.count, config.inChannels, config.inputSize, config.inputSize] }
    /// The synthetic dataset the checkpoint was trained on (nil for other checkpoints).
    public var data: SyntheticData?
    /// The student parameters the samples came from.
    public var student: [String: Tensor<Double>]
}

public enum Sampling {
    /// Loads the student of `path` and runs the sampler; `progress(i, N)` after each step.
    public static func run(checkpoint path: String, _ o: SampleOptions, progress: (Int, Int) -> Void = { _, _ in }) throws -> SampleResult {
        let f = try ExchangeFile.read(path)
        func fail(_ s: String) -> ExchangeError { ExchangeError("\(path): \(s)") }
        var cfg = f.config
        guard f.has(group: "params") else { throw fail("group /params is missing: the sampler needs the student parameters") }
        let student = try f.parameters("params", cfg.studentParameters).tensors
        let train = (try? JSONSerialization.jsonObject(with: Data(f.configJSON.utf8)) as? [String: Any])?["train"] as? [String: Any]
        var prec = o.precision ?? .fp32
        if o.precision == nil, let p = train?["precision"] as? String, let q = FastPrecision(rawValue: p) { prec = q }
        guard o.steps >= 2 else { throw ConfigError("--steps must be at least 2 (SPEC §6 divides by N - 1), found \(o.steps)") }
        guard o.sigmaMin > 0, o.sigmaMax > o.sigmaMin, o.sigmaMax.isFinite, o.rho > 0, o.rho.isFinite else {
            throw ConfigError("need 0 < --sigma-min < --sigma-max and --rho > 0, found sigma range [\(o.sigmaMin), \(o.sigmaMax)], rho \(o.rho)")
        }
        guard o.count >= 1 && o.count <= 4096 else { throw ConfigError("--n must lie in 1...4096, found \(o.count)") }
        if let w = o.cfgScale, !w.isFinite { throw ConfigError("--cfg-scale must be finite") }
        let labels = (0..<o.count).map { i in o.labels.map { $0[i % $0.count] } ?? i % cfg.numClasses }
        if let bad = labels.first(where: { $0 < 0 || $0 > cfg.numClasses }) {
            throw ConfigError("label \(bad) is out of range 0...\(cfg.numClasses) (\(cfg.numClasses) is the null label)")
        }
        let keepSigmaT = cfg.teacherSigma
        cfg.sigmaMin = o.sigmaMin; cfg.sigmaMax = o.sigmaMax; cfg.rho = o.rho; cfg.sigmaT = keepSigmaT; cfg.cfgScale = o.cfgScale
        let sig = HeunSampler.sigmas(steps: o.steps, sigmaMin: o.sigmaMin, sigmaMax: o.sigmaMax, rho: o.rho)
        let per = cfg.inChannels * cfg.inputSize * cfg.inputSize
        var rng = SeededRandom(seed: o.seed)
        let xInit = rng.normals(o.count * per, std: sig[0])
        let m = FastModel(cfg, precision: prec, student: student, teacher: nil)
        var x = xInit, traj: [[Double]] = []
        for i in 0..<o.steps {   // one Heun step at a time: the same arithmetic as one call over all sigmas
            x = try m.sample(xInit: x, labels: labels, sigmas: [sig[i], sig[i + 1]], cfgScale: o.cfgScale).last!
            traj.append(x)
            progress(i + 1, o.steps)
        }
        var data: SyntheticData? = nil
        if let t = train, t["dataset"] as? String == "synthetic", let ds = t["data_seed"] as? String, let dseed = UInt64(ds) {
            let tr = (t["train_size"] as? NSNumber)?.intValue ?? 2048, ho = (t["held_out_size"] as? NSNumber)?.intValue ?? 256
            data = SyntheticData(cfg, seed: dseed, trainSize: tr, heldOutSize: ho)
        }
        return SampleResult(config: cfg, precision: prec, sigmas: sig, xInit: xInit, labels: labels, trajectory: traj, data: data, student: student)
    }

    /// /params (so `oracle diff` can rerun it), /sampler (x_init, labels, sigmas, x.I, out), config. Atomic.
    public static func write(_ r: SampleResult, to path: String, extra: [String: Any]) throws {
        var ds: [String: NamedTensor] = [:]
        let label = r.precision.label
        for (k, v) in r.student { ds["params/" + k] = NamedTensor(shape: v.shape, values: v.data, precision: .float32) }
        ds["sampler/x_init"] = NamedTensor(shape: r.shape, values: r.xInit, precision: .float64)
        ds["sampler/sigmas"] = NamedTensor(shape: [r.sigmas.count], values: r.sigmas, precision: .float64)
        for (i, x) in r.trajectory.enumerated() { ds["sampler/x.\(i)"] = NamedTensor(shape: r.shape, values: x, precision: label) }
        ds["sampler/out"] = NamedTensor(shape: r.shape, values: r.out, precision: label)
        try ExchangeWriter.write(path, config: r.config, configExtra: extra.merging(["num_steps": r.sigmas.count - 1]) { a, _ in a },
                                 datasets: ds, integers: ["sampler/labels": (r.labels.map(Int64.init), [r.labels.count])],
                                 cfgScale: r.config.cfgScale)
    }
}

// MARK: - Samples against the data

public struct SampleReport: Sendable {
    /// Fraction whose nearest class mean (of the held-out data) is their own label (labelled samples only).
    public var accuracy: (samples: Double, data: Double, noise: Double)
    /// RMS distance (per element) to the class mean of the label.
    public var toClassMean: (samples: Double, data: Double, noise: Double)
    /// RMS distance to the nearest held-out example (data: training examples to the held-out set).
    public var toNearest: (samples: Double, data: Double, noise: Double)
    /// Per-element std of the samples and of the data.
    public var std: (samples: Double, data: Double)
}

extension SampleResult {
    func rows(_ flat: [Double]) -> [[Double]] {
        let per = flat.count / max(labels.count, 1)
        return (0..<labels.count).map { Array(flat[($0 * per)..<(($0 + 1) * per)]) }
    }

    public func report() -> SampleReport? {
        guard let d = data else { return nil }
        let K = d.classes, per = d.sampleCount
        var means = [[Double]](repeating: [Double](repeating: 0, count: per), count: K), cnt = [Int](repeating: 0, count: K)
        for (x, y) in zip(d.heldOut, d.heldOutLabels) { for j in 0..<per { means[y][j] += x[j] }; cnt[y] += 1 }
        for k in 0..<K { means[k] = means[k].map { $0 / Double(max(cnt[k], 1)) } }
        func rms(_ a: [Double], _ b: [Double]) -> Double { (zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } / Double(a.count)).squareRoot() }
        func stats(_ xs: [[Double]], _ ys: [Int], _ ref: [[Double]]) -> (Double, Double, Double) {
            var ok = 0, n = 0, dm = 0.0, dn = 0.0
            for (x, y) in zip(xs, ys) {
                if y < K {
                    let near = (0..<K).min { rms(x, means[$0]) < rms(x, means[$1]) }!
                    if near == y { ok += 1 }
                    dm += rms(x, means[y]); n += 1
                }
                dn += ref.map { rms(x, $0) }.min()!
            }
            return (Double(ok) / Double(max(n, 1)), dm / Double(max(n, 1)), dn / Double(max(xs.count, 1)))
        }
        let s = stats(rows(out), labels, d.heldOut)
        let m = min(d.train.count, 256)
        let dd = stats(Array(d.train.prefix(m)), Array(d.trainLabels.prefix(m)), d.heldOut)
        var rng = SeededRandom(seed: 99)
        let noise = (0..<labels.count).map { _ in rng.normals(per, std: config.sigmaData) }
        let nn = stats(noise, labels, d.heldOut)
        func sd(_ xs: [[Double]]) -> Double {
            let v = xs.flatMap { $0 }, mu = v.reduce(0, +) / Double(v.count)
            return (v.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Double(v.count)).squareRoot()
        }
        return SampleReport(accuracy: (s.0, dd.0, nn.0), toClassMean: (s.1, dd.1, nn.1), toNearest: (s.2, dd.2, nn.2),
                            std: (sd(rows(out)), sd(d.heldOut)))
    }

    /// An SVG scatter of samples (crosses) and held-out data (faint dots) on the data's first
    /// two principal directions, colored by class.
    public func svg(title: String) -> String? {
        guard let d = data else { return nil }
        let per = d.sampleCount
        let mu = (0..<per).map { j in d.heldOut.reduce(0) { $0 + $1[j] } / Double(d.heldOut.count) }
        let centered = d.heldOut.map { x in (0..<per).map { x[$0] - mu[$0] } }
        // top two principal directions: power iteration on X^T X with deflation
        func cov(_ v: [Double]) -> [Double] {
            var out = [Double](repeating: 0, count: per)
            for x in centered {
                var dot = 0.0
                for j in 0..<per { dot += x[j] * v[j] }
                for j in 0..<per { out[j] += dot * x[j] }
            }
            return out
        }
        func normalize(_ v: [Double]) -> [Double] { let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot(); return v.map { $0 / max(n, 1e-300) } }
        var rng = SeededRandom(seed: 7)
        var dirs: [[Double]] = []
        for _ in 0..<2 {
            var v = normalize(rng.normals(per))
            for _ in 0..<200 {
                var w = cov(v)
                for u in dirs { let p = zip(w, u).reduce(0) { $0 + $1.0 * $1.1 }; w = zip(w, u).map { $0 - p * $1 } }
                v = normalize(w)
            }
            dirs.append(v)
        }
        func proj(_ x: [Double]) -> (Double, Double) {
            var a = 0.0, b = 0.0
            for j in 0..<per { a += (x[j] - mu[j]) * dirs[0][j]; b += (x[j] - mu[j]) * dirs[1][j] }
            return (a, b)
        }
        let pd = d.heldOut.map(proj), ps = rows(out).map(proj)
        let all = pd + ps
        let xs = all.map(\.0).filter(\.isFinite), ys = all.map(\.1).filter(\.isFinite)
        guard let x0 = xs.min(), let x1 = xs.max(), let y0 = ys.min(), let y1 = ys.max() else { return nil }
        let W = 720.0, H = 560.0, L = 60.0, R = 170.0, T = 50.0, B = 50.0
        func sx(_ v: Double) -> Double { L + (v - x0) / max(x1 - x0, 1e-12) * (W - L - R) }
        func sy(_ v: Double) -> Double { H - B - (v - y0) / max(y1 - y0, 1e-12) * (H - T - B) }
        let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
        func color(_ k: Int) -> String { k >= d.classes ? "#000000" : palette[k % palette.count] }
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(W))\" height=\"\(Int(H))\" viewBox=\"0 0 \(Int(W)) \(Int(H))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(Int(L))\" y=\"24\" font-size=\"14\">\(esc(title))</text>\n"
        s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", L, T, W - L - R, H - T - B)
        s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">principal direction 1 of the held-out data</text>\n", L + (W - L - R) / 2, H - 15)
        s += String(format: "<text x=\"18\" y=\"%.1f\" transform=\"rotate(-90 18 %.1f)\" text-anchor=\"middle\">principal direction 2</text>\n", T + (H - T - B) / 2, T + (H - T - B) / 2)
        for (p, y) in zip(pd, d.heldOutLabels) {
            s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\" fill-opacity=\"0.3\"/>\n", sx(p.0), sy(p.1), color(y))
        }
        for (p, y) in zip(ps, labels) where p.0.isFinite && p.1.isFinite {
            let cx = sx(p.0), cy = sy(p.1)
            s += String(format: "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" stroke=\"%@\" stroke-width=\"2\"/>\n",
                        cx - 4, cy - 4, cx + 4, cy + 4, cx - 4, cy + 4, cx + 4, cy - 4, color(y))
        }
        let lx = W - R + 15
        s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#444\" fill-opacity=\"0.3\"/><text x=\"%.1f\" y=\"%.1f\">held-out data</text>\n", lx, T + 6, lx + 10, T + 10)
        s += String(format: "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" stroke=\"#444\" stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\">samples</text>\n",
                    lx - 4, T + 22, lx + 4, T + 30, lx - 4, T + 30, lx + 4, T + 22, lx + 10, T + 30)
        for k in 0..<d.classes {
            let y = T + 54 + Double(k) * 18
            s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%@\"/><text x=\"%.1f\" y=\"%.1f\">class %d</text>\n", lx - 5, y - 9, color(k), lx + 10, y, k)
        }
        if labels.contains(where: { $0 >= d.classes }) {
            let y = T + 54 + Double(d.classes) * 18
            s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"#000\"/><text x=\"%.1f\" y=\"%.1f\">null label</text>\n", lx - 5, y - 9, lx + 10, y)
        }
        s += "</svg>\n"
        return s
    }
}
