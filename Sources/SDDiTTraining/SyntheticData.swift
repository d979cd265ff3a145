import Foundation
import SDDiTCore

/// A small class-conditional latent dataset made from a seed, shaped like the config's latents
/// [C, H, W]: each class is a smooth template (per channel two low-frequency plane waves with
/// random frequencies, orientations and phases), and a sample is the template with a random
/// amplitude (U(0.8, 1.2)), a random common phase shift (N(0, 0.25^2) rad) and white noise
/// (std 0.1). Templates are scaled to RMS 0.47, so the data's standard deviation is about
/// sigma_data = 0.5 (EDM's assumption). Train and held-out splits use different seeds from the
/// same templates. Everything is a pure function of (seed, shape, classes, sizes).
public struct SyntheticData: Sendable {
    public let channels: Int, size: Int, classes: Int
    public let seed: UInt64
    /// Per class, the flattened template [C * H * W].
    public let templates: [[Double]]
    public let train: [[Double]], trainLabels: [Int]
    public let heldOut: [[Double]], heldOutLabels: [Int]
    public var sampleCount: Int { channels * size * size }

    struct Wave { var fx: Double, fy: Double, phase: Double, amp: Double }

    public init(channels C: Int, size H: Int, classes K: Int, seed: UInt64, trainSize: Int = 2048, heldOutSize: Int = 256) {
        channels = C; size = H; classes = K; self.seed = seed
        var rng = SeededRandom(seed: seed &* 0x2545_F491_4F6C_DD1D &+ 11)
        var waves: [[[Wave]]] = []   // [class][channel][2]
        for _ in 0..<K {
            waves.append((0..<C).map { _ in
                (0..<2).map { _ in
                    // frequencies 0.5 ... 2 cycles across the image, any orientation
                    let f = 0.5 + 1.5 * rng.uniform(), a = 2 * Double.pi * rng.uniform()
                    return Wave(fx: f * cos(a), fy: f * sin(a), phase: 2 * Double.pi * rng.uniform(), amp: 0.5 + rng.uniform())
                }
            })
        }
        func render(_ k: Int, shift: Double, amp: Double) -> [Double] {
            var x = [Double](repeating: 0, count: C * H * H)
            for c in 0..<C { for i in 0..<H { for j in 0..<H {
                var v = 0.0
                for w in waves[k][c] {
                    v += w.amp * sin(2 * Double.pi * (w.fx * Double(j) + w.fy * Double(i)) / Double(H) + w.phase + shift)
                }
                x[(c * H + i) * H + j] = amp * v
            } } }
            return x
        }
        // scale every class template to RMS 0.47
        var scales: [Double] = []
        var temps: [[Double]] = []
        for k in 0..<K {
            let t = render(k, shift: 0, amp: 1)
            let rms = (t.reduce(0) { $0 + $1 * $1 } / Double(t.count)).squareRoot()
            scales.append(0.47 / max(rms, 1e-12))
            temps.append(t.map { $0 * scales[k] })
        }
        templates = temps
        func split(_ n: Int, _ s: UInt64) -> ([[Double]], [Int]) {
            var r = SeededRandom(seed: s)
            var xs: [[Double]] = [], ys: [Int] = []
            for i in 0..<n {
                let k = i % K
                let amp = scales[k] * (0.8 + 0.4 * r.uniform()), shift = 0.25 * r.normal()
                let x = render(k, shift: shift, amp: amp)
                xs.append(x.map { $0 + 0.1 * r.normal() }); ys.append(k)
            }
            return (xs, ys)
        }
        (train, trainLabels) = split(trainSize, seed &+ 1000)
        (heldOut, heldOutLabels) = split(heldOutSize, seed &+ 2000)
    }

    public init(_ cfg: ModelConfig, seed: UInt64, trainSize: Int = 2048, heldOutSize: Int = 256) {
        self.init(channels: cfg.inChannels, size: cfg.inputSize, classes: cfg.numClasses, seed: seed,
                  trainSize: trainSize, heldOutSize: heldOutSize)
    }

    /// Standard deviation of the training split (about 0.5).
    public var trainStd: Double {
        var s = 0.0, s2 = 0.0, n = 0.0
        for x in train { for v in x { s += v; s2 += v * v; n += 1 } }
        return (s2 / n - (s / n) * (s / n)).squareRoot()
    }
}
