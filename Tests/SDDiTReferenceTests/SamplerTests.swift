import Foundation
import PropertyBased
import SDDiTReference
import Testing
import TestSupport

// EDM's deterministic Heun sampler (SPEC §6) against closed forms.
//
// For data ~ N(0, sd^2) the ideal denoiser is D(x; s) = x sd^2/(s^2 + sd^2), and the
// probability-flow ODE dx/ds = (x - D)/s = x s/(s^2 + sd^2) has the exact solution
// x(s) = x(s0) sqrt((s^2 + sd^2)/(s0^2 + sd^2)).

private let uS = Double.ulpOfOne / 2

/// max |a_i - b_i| / |b_i| (an exact match counts 0); NaN when any element's error is NaN or
/// the lengths differ, so that `err <= tol` fails (a `max` fold would drop the NaN).
private func samplerMaxRelErr(_ a: [Double], _ b: [Double]) -> Double {
    guard a.count == b.count else { return .nan }
    return maxOrNaN(zip(a, b).lazy.map { $0 == $1 ? 0 : abs($0 - $1) / abs($1) })
}

/// The Gaussian toy: trajectory of HeunSampler.sample from sigma_max with N steps.
private func gaussianRun(steps N: Int, sd: Double, smin: Double, smax: Double, rho: Double,
                         x0: Tensor<Double>) -> (sigmas: [Double], traj: [Tensor<Double>]) {
    let sig: [Double] = HeunSampler.sigmas(steps: N, sigmaMin: smin, sigmaMax: smax, rho: rho)
    let traj = HeunSampler.sample(xInit: x0, sigmas: sig) { x, s in
        x.map { $0 * sd * sd / (s * s + sd * sd) }
    }
    return (sig, traj)
}

@Suite("Heun sampler (SPEC §6) against closed forms")
struct SamplerTests {

    /// sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N, then 0:
    /// recomputed here as exp(rho ln((1 - t) smax^(1/rho) + t smin^(1/rho))), t = i/(N-1).
    /// Tolerance: the SPEC form computes the base a + t (b - a) (a = smax^(1/rho),
    /// b = smin^(1/rho)) with an absolute rounding error of ~2 u a, which near the end
    /// (base ~ b << a) is a relative error 2 u a/base, and the power multiplies relative
    /// errors by rho: |sigma_i - formula| <= 4 u rho (2 + a/base_i) sigma_i. (At rho 7,
    /// 80 -> 0.002 that is <= 2e-14 relative; at rho 1, smax/smin = 1e6 it is ~1e-9:
    /// the cancellation is in the formula of SPEC/EDM itself, not an implementation bug.)
    @Test func sigmaScheduleMatchesSpec() async {
        await propertyCheck(count: 200, input: Gen.int(in: 2...200), Gen.double(in: 1...10),
                            Gen.double(in: -4 ... -1).map { Foundation.pow(10, $0) }, Gen.double(in: 1...100)) { N, rho, smin, smax in
            let sig: [Double] = HeunSampler.sigmas(steps: N, sigmaMin: smin, sigmaMax: smax, rho: rho)
            #expect(sig.count == N + 1, "sigmas(steps: \(N)) has \(sig.count) values, expected N + 1 = \(N + 1)")
            guard sig.count == N + 1 else { return }
            #expect(sig[N] == 0, "sigma_N = \(sig[N]), expected 0")
            let a = Foundation.pow(smax, 1 / rho), b = Foundation.pow(smin, 1 / rho)
            func tol(_ base: Double) -> Double { 4 * uS * rho * (2 + a / base) }
            #expect(abs(sig[0] - smax) <= tol(a) * smax, "sigma_0 = \(sig[0]), expected sigma_max = \(smax)")
            #expect(abs(sig[N - 1] - smin) <= tol(b) * smin, "sigma_{N-1} = \(sig[N - 1]), expected sigma_min = \(smin) (tolerance \(tol(b) * smin))")
            for i in 0..<N {
                let t = Double(i) / Double(N - 1), base = (1 - t) * a + t * b
                let e = Foundation.exp(rho * Foundation.log(base))
                if abs(sig[i] - e) > tol(base) * e {
                    Issue.record("sigma_\(i) = \(sig[i]), formula \(e) (N \(N), rho \(rho), smin \(smin), smax \(smax))"); break
                }
                if i > 0 && !(sig[i] < sig[i - 1]) {
                    Issue.record("sigmas not decreasing at \(i): \(sig[i - 1]) -> \(sig[i])"); break
                }
            }
        }
        // SPEC defaults: N = 40, rho = 7, smin 0.002, smax 80
        let s: [Double] = HeunSampler.sigmas(steps: 40, sigmaMin: 0.002, sigmaMax: 80, rho: 7)
        #expect(s.count == 41 && s.last == 0 && abs(s[0] - 80) <= 1e-12 && abs(s[39] - 0.002) <= 1e-16,
                "SPEC schedule: \(s.count) values, sigma_0 \(s.first ?? .nan), sigma_39 \(s.count > 39 ? s[39] : .nan), last \(s.last ?? .nan)")
    }

    /// Second order: integrate the Gaussian toy from s0 = 80 to sigma_min = 0.002 (the state
    /// after step N-2, at sigma_{N-1}) and compare with the exact x(sigma_min). Doubling the
    /// number of Heun intervals (N-1 = 10, 20, 40, 80, i.e. N = 11, 21, 41, 81) must cut the
    /// error ~4x: each ratio in [3, 5] (measured 4.46, 4.22, 4.11, tending to 4; a
    /// first-order method gives ~2). The literal N = 10, 20, 40, 80 is printed too: its
    /// first ratio is 5.03 because 19/9 intervals is not a doubling.
    /// The final Euler step to sigma = 0 is reported: it maps x to x sd^2/(smin^2 + sd^2)
    /// while the exact flow gives x sd/sqrt(smin^2 + sd^2), a fixed relative error of
    /// 1 - sd/sqrt(smin^2+sd^2) ~ 8e-6 (smin = 0.002) that does not shrink with N; we
    /// check the last step is exactly that Euler update (1e-15 relative).
    @Test func heunIsSecondOrderOnGaussian() {
        let sd = 0.5, smin = 0.002, smax = 80.0, rho = 7.0
        var rng = SeededRandom(seed: 5)
        let x0 = Tensor(shape: [2, 3], data: rng.normals(6, std: smax))
        var errs: [Double] = []
        var lines = ["Heun on N(0, sd^2), sd 0.5, rho 7, 80 -> 0.002:",
                     "   N  intervals  rel.err at sigma_min  ratio   rel.err at 0 (Euler last step)"]
        for N in [11, 21, 41, 81] {
            let (sig, traj) = gaussianRun(steps: N, sd: sd, smin: smin, smax: smax, rho: rho, x0: x0)
            #expect(traj.count == N, "trajectory has \(traj.count) states, expected N = \(N)")
            guard traj.count == N else { return }
            let atMin = traj[N - 2]
            let factor = ((smin * smin + sd * sd) / (smax * smax + sd * sd)).squareRoot()
            let exact = x0.data.map { $0 * factor }
            let e = samplerMaxRelErr(atMin.data, exact)
            // final: Euler step x + (0 - smin) (x - D)/smin
            let out = traj[N - 1]
            let euler = atMin.data.map { x in x + (0 - sig[N - 1]) * ((x - x * sd * sd / (smin * smin + sd * sd)) / sig[N - 1]) }
            let eEuler = samplerMaxRelErr(out.data, euler)
            #expect(eEuler <= 1e-15, "last step (sigma \(sig[N - 1]) -> 0) is not one Euler step: rel diff \(eEuler) (N \(N))")
            let exact0 = x0.data.map { $0 * sd / (smax * smax + sd * sd).squareRoot() }
            let e0 = samplerMaxRelErr(out.data, exact0)
            let ratio = errs.last.map { $0 / e } ?? .nan
            lines.append(String(format: "%4d  %9d  %20.6e  %5.2f   %.6e", N, N - 1, e, ratio, e0))
            if let prev = errs.last {
                #expect(ratio >= 3 && ratio <= 5, "error ratio \(prev) / \(e) = \(ratio) from N-1 = \((N - 1) / 2) to \(N - 1) intervals; expected ~4 (second order)")
            }
            // The Euler step's own relative error, 1 - sd/sqrt(smin^2 + sd^2), bounds how
            // close `out` can get to x(0); it must dominate once the Heun error is small.
            let eulerBias = 1 - sd / (smin * smin + sd * sd).squareRoot()
            #expect(abs(e0 - eulerBias) <= e * 1.01 + 1e-14,
                    "rel. error at sigma = 0 is \(e0), expected Euler bias \(eulerBias) +- Heun error \(e) (N \(N))")
            errs.append(e)
        }
        // For reference, the literal N = 10, 20, 40, 80 (intervals 9, 19, 39, 79, not an
        // exact doubling, so the ratios carry an extra ((N2-1)/(N1-1))^2 / 4 factor).
        var prev = Double.nan
        for N in [10, 20, 40, 80] {
            let (_, traj) = gaussianRun(steps: N, sd: sd, smin: smin, smax: smax, rho: rho, x0: x0)
            let factor = ((smin * smin + sd * sd) / (smax * smax + sd * sd)).squareRoot()
            let e = samplerMaxRelErr(traj[N - 2].data, x0.data.map { $0 * factor })
            lines.append(String(format: "%4d  %9d  %20.6e  %5.2f   (N-1 not doubled)", N, N - 1, e, prev / e))
            prev = e
        }
        print(lines.joined(separator: "\n"))
    }

    /// Constant derivative toy, D(x; s) = x - c s: dx/ds = c, x(s) = x_init + c (s - s0).
    /// Euler and Heun are both exact for it (d' = d), including the final Euler step to
    /// 0; the denoiser must be called at (s0, s1), (s1, s2), ..., then once at s_{N-1}.
    /// Tolerance: the toy's D = x - c s is itself rounded (by up to u M, M the largest
    /// |x| or |c s|), and the sampler divides x - D by sigma and multiplies by the step h,
    /// so step i adds up to ~4 u M (2 + |h_i|/s_i + |h_i|/s_{i+1}) (the last term absent
    /// at s_{i+1} = 0); the bound is accumulated step by step. (For N = 2 the single Heun
    /// step has h/s_1 = 4e4: the evaluation at sigma_min is then ill-conditioned.)
    @Test func constantDerivativeIsExact() async {
        await propertyCheck(count: 50, input: Gen.int(in: 2...60), Gen.double(in: -3...3), Gen.uint64(in: 0...UInt64.max)) { N, c, seed in
            var rng = SeededRandom(seed: seed)
            let sig: [Double] = HeunSampler.sigmas(steps: N, sigmaMin: 0.002, sigmaMax: 80, rho: 7)
            let x0 = Tensor(shape: [5], data: rng.normals(5, std: 80))
            var calls: [Double] = []
            let traj = HeunSampler.sample(xInit: x0, sigmas: sig) { x, s in
                calls.append(s)
                return x.map { $0 - c * s }
            }
            var expectCalls: [Double] = []
            for i in 0..<N { expectCalls.append(sig[i]); if sig[i + 1] != 0 { expectCalls.append(sig[i + 1]) } }
            #expect(calls == expectCalls, "denoiser called at sigmas \(calls), expected \(expectCalls) (2N-1 = \(2 * N - 1) calls)")
            #expect(traj.count == N, "trajectory has \(traj.count) states, expected \(N)")
            let M = maxAbsOrNaN(x0.data) + abs(c) * 80
            var tol = 0.0
            for (i, x) in traj.enumerated() {
                let h = abs(sig[i + 1] - sig[i])
                tol += 4 * uS * M * (2 + h / sig[i] + (sig[i + 1] > 0 ? h / sig[i + 1] : 0))
                for j in 0..<5 {
                    let e = x0.data[j] + c * (sig[i + 1] - sig[0])
                    if !(abs(x.data[j] - e) <= tol) {   // a NaN state fails too
                        Issue.record("state after step \(i) (sigma \(sig[i + 1]))[\(j)] = \(x.data[j]), exact \(e), tol \(tol)"); return
                    }
                }
            }
        }
    }

    /// Linear derivative toy, D(x; s) = x - a s^2: dx/ds = a s, x(s) = x_init + a (s^2 - s0^2)/2.
    /// Heun's trapezoid rule is exact for a derivative linear in s, so every state down to
    /// sigma_min matches; the last step to 0 is Euler (SPEC §6: no correction when
    /// sigma_{i+1} = 0), which lands at x(smin) - a smin^2 instead of x(smin) - a smin^2/2.
    /// Tolerance 1e-12 absolute on |x| <= ~80 + 3 * 80^2 (N * ~4 u of the largest term).
    @Test func linearDerivativeTrapezoidExactAndEulerLast() {
        let N = 25, a = 1.7, smin = 0.002
        let sig: [Double] = HeunSampler.sigmas(steps: N, sigmaMin: smin, sigmaMax: 80, rho: 7)
        let x0 = Tensor(shape: [3], data: [0.3, -40, 12])
        let traj = HeunSampler.sample(xInit: x0, sigmas: sig) { x, s in x.map { $0 - a * s * s } }
        let tol = Double(N) * 8 * uS * a * 80 * 80
        for i in 0..<(N - 1) {
            for j in 0..<3 {
                let e = x0.data[j] + a * (sig[i + 1] * sig[i + 1] - sig[0] * sig[0]) / 2
                #expect(abs(traj[i].data[j] - e) <= tol, "state after step \(i) (sigma \(sig[i + 1]))[\(j)] = \(traj[i].data[j]), trapezoid-exact \(e)")
            }
        }
        for j in 0..<3 {
            let atMin = traj[N - 2].data[j]
            let euler = atMin - a * smin * smin, exact = atMin - a * smin * smin / 2
            #expect(abs(traj[N - 1].data[j] - euler) <= 1e-13 * max(1, abs(euler)),
                    "last state[\(j)] = \(traj[N - 1].data[j]), Euler step gives \(euler) (exact flow \(exact))")
        }
    }

    /// The model sampler's classifier-free guidance: w = 0 samples with the null label
    /// (D(., null) + 0 (...) = D(., null) exactly), and w = 1 equals unguided sampling up
    /// to the rounding of d0 + (d - d0) (~u |d0|/|d| per call; 1e-12 over 3 steps).
    @Test func guidanceEndpoints() {
        let cfg = ModelConfig.tiny
        let P: Parameters<Double> = Initialization.parameters(cfg, mode: .random, seed: 51)
        var rng = SeededRandom(seed: 52)
        let sig: [Double] = HeunSampler.sigmas(steps: 3, sigmaMin: cfg.sigmaMin, sigmaMax: cfg.sigmaMax, rho: cfg.rho)
        let xInit = Tensor(shape: [2, cfg.inChannels, cfg.inputSize, cfg.inputSize],
                           data: rng.normals(2 * cfg.inChannels * cfg.inputSize * cfg.inputSize, std: sig[0]))
        let labels = [1, 4], null = Array(repeating: cfg.numClasses, count: 2)
        let plain = HeunSampler.run(cfg, P, xInit: xInit, labels: labels, sigmas: sig)
        let w1 = HeunSampler.run(cfg, P, xInit: xInit, labels: labels, sigmas: sig, cfgScale: 1)
        let nullRun = HeunSampler.run(cfg, P, xInit: xInit, labels: null, sigmas: sig)
        let w0 = HeunSampler.run(cfg, P, xInit: xInit, labels: labels, sigmas: sig, cfgScale: 0)
        #expect(plain.count == 3 && w1.count == 3 && w0.count == 3, "trajectories have \(plain.count), \(w1.count), \(w0.count) states, expected 3")
        for i in 0..<min(plain.count, w1.count, w0.count, nullRun.count) {
            let scale = maxAbsOrNaN(plain[i].data)
            let d1 = maxAbsDiffOrNaN(plain[i].data, w1[i].data)
            #expect(d1 <= 1e-12 * scale, "cfg w = 1 differs from unguided at step \(i) by \(d1) (scale \(scale))")
            #expect(w0[i].data == nullRun[i].data, "cfg w = 0 differs from null-label sampling at step \(i)")
        }
        // the label matters (otherwise the two checks above are vacuous)
        let dl = maxAbsDiffOrNaN(plain[0].data, nullRun[0].data)
        #expect(dl > 1e-6, "null label and label \(labels) give the same first step (diff \(dl))")
    }
}
