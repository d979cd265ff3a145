import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange
import SDDiTTraining
import SDDiTFast

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the Heun sampler (SPEC §6) from a training checkpoint and write the samples.",
        discussion: """
        Samples come from the checkpoint's student network D (the EMA teacher has no decoder). x_init is unit noise from --seed times sigma_0 = --sigma-max; labels cycle through --labels (default 0, 1, ..., num_classes - 1; num_classes is the null label). The output holds /params, /sampler (x_init, labels, sigmas, x.I after every step, out) and the config with the sampler's sigma range, rho and cfg_scale, so `oracle diff --a OUT --b fast` reruns it. For a checkpoint of the synthetic dataset it prints how close the samples land to the data (nearest class mean, distance to the label's class mean and to the nearest held-out example, beside the same numbers for held-out data and for plain noise), and --plot writes an SVG of samples and data on the data's two principal directions.

        Examples:
          oracle sample --checkpoint run.h5 --out samples.h5 --plot samples.svg
          oracle sample --checkpoint run.h5 --steps 40 --cfg-scale 2 --labels 3 \\
              --n 16 --out s3.h5
        """)

    @Option(help: "Training checkpoint (oracle train --checkpoint).") var checkpoint: String
    @Option(help: "Output HDF5 file.") var out: String
    @Option(help: "SVG plot of samples against the data (synthetic-dataset checkpoints).") var plot: String?
    @Option(help: "Heun steps N (>= 2).") var steps: Int = 18
    @Option(help: "rho of the noise schedule.") var rho: Double = 7
    @Option(name: .customLong("sigma-min"), help: "Smallest noise level.") var sigmaMin: Double = 0.002
    @Option(name: .customLong("sigma-max"), help: "Largest noise level (x_init's std).") var sigmaMax: Double = 80
    @Option(name: .customLong("cfg-scale"), help: "Classifier-free guidance scale w (none: plain conditional sampling).") var cfgScale: Double?
    @Option(name: .customLong("n"), help: "Number of samples.") var count: Int = 64
    @Option(help: "Comma-separated class labels, cycled over the samples.") var labels: String?
    @Option(help: "Seed of x_init.") var seed: UInt64 = 0
    @Option(help: "Precision of the network (default: the checkpoint's).") var precision: FastPrecision?

    func validate() throws {
        if steps < 2 { throw ValidationError("--steps must be at least 2 (SPEC §6 divides by N - 1), found \(steps)") }
        if count < 1 || count > 4096 { throw ValidationError("--n must lie in 1...4096, found \(count)") }
        if !(sigmaMin > 0 && sigmaMax > sigmaMin && sigmaMax.isFinite) {
            throw ValidationError("need 0 < --sigma-min < --sigma-max, found \(sigmaMin) and \(sigmaMax)")
        }
        if !(rho > 0 && rho.isFinite) { throw ValidationError("--rho must be positive, found \(rho)") }
        if let l = labels, parsedLabels(l) == nil { throw ValidationError("--labels must be comma-separated non-negative integers, found '\(l)'") }
        try requireWritableOutput(out, option: "--out")
        if let p = plot { try requireWritableOutput(p, option: "--plot") }
    }

    func parsedLabels(_ s: String) -> [Int]? {
        let v = s.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ $0 != nil && $0! >= 0 }) else { return nil }
        return v.map { $0! }
    }

    func run() throws {
        var o = SampleOptions()
        o.steps = steps; o.rho = rho; o.sigmaMin = sigmaMin; o.sigmaMax = sigmaMax; o.cfgScale = cfgScale
        o.count = count; o.labels = labels.flatMap(parsedLabels); o.seed = seed
        o.precision = precision
        let tty = isatty(STDERR_FILENO) != 0
        let clock = ContinuousClock(), t0 = clock.now
        let r = try reportingErrors {
            try Sampling.run(checkpoint: checkpoint, o) { i, n in
                let el = (clock.now - t0).seconds
                if tty {
                    let w = 20, f = w * i / n
                    FileHandle.standardError.write(String(format: "\r[%@%@] Heun step %d/%d  %.1f steps/s\u{1B}[K",
                                                          String(repeating: "#", count: f), String(repeating: "-", count: w - f),
                                                          i, n, Double(i) / max(el, 1e-9)).data(using: .utf8)!)
                    if i == n { FileHandle.standardError.write("\n".data(using: .utf8)!) }
                } else if i % max(n / 6, 1) == 0 || i == n {
                    print(String(format: "Heun step %d/%d  %.1f steps/s", i, n, Double(i) / max(el, 1e-9)))
                }
            }
        }
        let secs = (clock.now - t0).seconds
        let mode = r.precision.argumentName
        let evals = (2 * steps - 1) * (cfgScale == nil ? 1 : 2)
        print(String(format: "sampled %d x [%d, %d, %d] in %d Heun steps (%d network evaluations) in %.2f s; %@, sigma %g..%g, rho %g, cfg scale %@",
                     count, r.config.inChannels, r.config.inputSize, r.config.inputSize, steps, evals, secs, mode,
                     sigmaMax, sigmaMin, rho, cfgScale.map { String($0) } ?? "none"))
        if let non = r.out.firstIndex(where: { !$0.isFinite }) {
            print("warning: non-finite sample value at flat index \(non)")
        }
        if let rep = r.report() {
            print("samples against the synthetic data (class means and nearest examples from the held-out split):")
            print(String(format: "  nearest class mean is the label:       samples %5.1f%%   data %5.1f%%   noise N(0, sd^2) %5.1f%%",
                         100 * rep.accuracy.samples, 100 * rep.accuracy.data, 100 * rep.accuracy.noise))
            print(String(format: "  RMS distance to the label's class mean: samples %.4f   data %.4f   noise %.4f",
                         rep.toClassMean.samples, rep.toClassMean.data, rep.toClassMean.noise))
            print(String(format: "  RMS distance to the nearest example:    samples %.4f   data %.4f   noise %.4f",
                         rep.toNearest.samples, rep.toNearest.data, rep.toNearest.noise))
            print(String(format: "  std: samples %.4f, data %.4f", rep.std.samples, rep.std.data))
        }
        try reportingErrors {
            try Sampling.write(r, to: out, extra: ["generator": "sddit-oracle sample", "checkpoint": checkpoint, "seed": String(seed)])
            print("wrote \(out): /sampler (x_init, labels, sigmas [\(steps + 1)], x.0..x.\(steps - 1), out) and /params")
            if let p = plot {
                guard let svg = r.svg(title: "\(count) samples (\(steps) Heun steps\(cfgScale.map { ", cfg \($0)" } ?? "")) vs held-out data") else {
                    throw ExchangeError("\(checkpoint): not a synthetic-dataset checkpoint, nothing to plot against")
                }
                let tmp = p + ".tmp-\(getpid())"
                do { try svg.write(toFile: tmp, atomically: false, encoding: .utf8); _ = rename(tmp, p) } catch {
                    throw ExchangeError("\(p): cannot write the plot: \(error.localizedDescription)")
                }
                print("wrote \(p)")
            }
        }
    }
}
