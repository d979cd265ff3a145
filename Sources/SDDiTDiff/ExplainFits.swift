import Foundation
import SDDiTCore
import SDDiTExchange

// What a failing file's own numbers say in closed form (`oracle diff --explain`):
//   AdamW's first step from zero moments, p1 = p0 (1 - lr wd) - lr g / (|g| + eps)   (SPEC §5):
//     least squares of p1 - p0 on [g / (|g| + eps), p0] gives lr and lr wd; eps is the one
//     (on a log grid, 10 per decade) that leaves the least residual, the config's unless
//     another halves it. Without bias correction the step is (1 - b1) / sqrt(1 - b2) lr.
//     Tensors with p1 = p0 exactly (and a gradient) were not updated.
//   The EMA t1 = beta t0 + (1 - beta) s: 1 - beta = <t1 - t0, s - t0> / |s - t0|^2, with s the
//     student after the step (SPEC) or before it, whichever leaves the smaller residual.
//   The centers C1 = m C0 + (1 - m) mu, mu the batch mean of the teacher's rows: m likewise.
//   The DINO losses from the file's head rows (or the reference's): the tau_T (tau_S) that
//     reproduces L_D^cls, kept when it reproduces L_D^patch too.
//   A forward tensor that is a constant times the reference's, or a permutation of it,
//     within the calibrated rule.
// Each fitted value that differs from the config becomes a candidate the reruns test.
struct ExplainFits {
    var lines: [Explanation] = []
    var candidates: [Divergence] = []

    init(_ e: ExplainRuns) throws {
        let cfg = e.cfg
        func file(_ p: String) throws -> [Double]? { try e.side.get(p)?.values }
        /// The file's dataset, else the reference's (a tensor the file did not record).
        func fileOrTruth(_ p: String) throws -> [Double]? { try file(p) ?? e.truth[p]?.values }

        // a forward tensor off by a factor or a permutation
        if let i = e.base.first, e.paths[i].hasPrefix("activations/"), let x = try file(e.paths[i]), let t = e.truth[e.paths[i]]?.values,
           x.count == t.count, let l = e.levels[e.paths[i]] {
            // within twice a correct run's level (the limit would let a coarse mode's sorted
            // values of a different tensor pass for a permutation)
            let p = e.paths[i], lim = Self.closedFormLevels
            let tt = t.reduce(0) { $0 + $1 * $1 }, xt = zip(x, t).reduce(0) { $0 + $1.0 * $1.1 }
            let alpha = tt > 0 ? xt / tt : 1
            if abs(alpha - 1) > 1e-3, let n = Calibration.normwise(x, t.map { $0 * alpha }), n / l <= lim {
                lines.append(Explanation(kind: .fit, text: String(format: "%@ is %.6g x the reference's (a constant factor, within x%.2g the %@ level): a scale missing or applied twice", p, alpha, n / l, e.mode.rawValue)))
            }
            if let n = Calibration.normwise(x.sorted(), t.sorted()), n / l <= lim {
                lines.append(Explanation(kind: .fit, text: String(format: "%@ holds the reference's values in another order (a permutation of its elements, within x%.2g the %@ level): an index-order bug (unpatchify's (i, j, c) order, the visible tokens' order, a transposed reshape)", p, n / l, e.mode.rawValue)))
            }
        }

        // a mask token: one vector at every hidden position of the decoder input
        if let h = try file("activations/" + ActivationName.decIn), let m = try file("inputs/mask"), let t = e.truth["activations/" + ActivationName.decIn]?.values {
            let D = cfg.hiddenSize, hidden = m.indices.filter { m[$0] != 0 }
            if !hidden.isEmpty, h.count == m.count * D, t.count == h.count {
                let row = (0..<D).map { j in hidden.reduce(0.0) { $0 + h[$1 * D + j] } / Double(hidden.count) }
                let scale = max(h.map(abs).max() ?? 0, .leastNormalMagnitude)
                var spread = 0.0, fromTokens = 0.0
                for r in hidden {
                    for j in 0..<D {
                        let x = h[r * D + j]
                        spread = max(spread, abs(x - row[j])); fromTokens = max(fromTokens, abs(x - t[r * D + j]))
                    }
                }
                if spread <= 1e-6 * scale, fromTokens > 1e-3 * scale, row.contains(where: { $0 != 0 }) {
                    let d = Divergences.maskToken(row.map { Float($0) })
                    candidates.append(d)
                    lines.append(Explanation(kind: .fit, text: "activations/\(ActivationName.decIn) holds one vector at every hidden position: \(d.cause)", divergences: [d.id]))
                }
            }
        }

        // the DINO temperatures
        if let Lc = try file("losses/dis_cls")?.first, let Lt = e.truth["losses/dis_cls"]?.values.first, abs(Lc - Lt) > 1e-5 * abs(Lt),
           let sc = try fileOrTruth("activations/" + ActivationName.headCls), let tc = try fileOrTruth("activations/" + ActivationName.teacherHeadCls),
           let cc = try file("inputs/center_cls") {
            let K = cfg.headOutDim
            let Lp = try file("losses/dis_patch")?.first
            let sp = try fileOrTruth("activations/" + ActivationName.headPatch), tp = try fileOrTruth("activations/" + ActivationName.teacherHeadPatch)
            let cp = try file("inputs/center_patch")
            for (key, fixed) in [("tau_t", cfg.tauS), ("tau_s", cfg.tauT)] {
                func loss(_ tau: Double, _ s: [Double], _ t: [Double], _ c: [Double]) -> Double {
                    key == "tau_t" ? Self.dino(s: s, t: t, c: c, K: K, tauT: tau, tauS: fixed) : Self.dino(s: s, t: t, c: c, K: K, tauT: fixed, tauS: tau)
                }
                var found: [Double] = []
                for tau in Self.roots({ loss($0, sc, tc, cc) - Lc }) where abs(tau / (key == "tau_t" ? cfg.tauT : cfg.tauS) - 1) > 1e-3 {
                    // kept only when the patch loss agrees as well (float32 resolution of a loss)
                    if let Lp, let sp, let tp, let cp, sp.count == tp.count, abs(loss(tau, sp, tp, cp) - Lp) > 1e-4 * abs(Lp) { continue }
                    let v = Self.nice(tau, rel: 1e-3)
                    if found.contains(v) { continue }
                    found.append(v)
                    let d = Divergences.configValue(key, v, cfg)
                    candidates.append(d)
                    lines.append(Explanation(kind: .fit, text: String(format: "losses/dis_cls%@ consistent with %@", Lp == nil ? "" : " and dis_patch", d.cause), divergences: [d.id]))
                }
            }
        }

        // AdamW's step
        let trained = cfg.trainableParameters.map(\.key).filter { e.paths.contains("after_step/params/" + $0) }
        if !trained.isEmpty {
            var frozen: [String] = []
            var g: [Double] = [], p0: [Double] = [], d: [Double] = [], owner: [Int] = []
            for (ki, k) in trained.enumerated() {
                guard let a = try file("params/" + k), let b = try file("after_step/params/" + k), let gr = try fileOrTruth("grads/" + k),
                      a.count == b.count, gr.count == a.count else { continue }
                // p1 = p0 up to the rounding of the file's after-step tensor
                let u = (try e.side.get("after_step/params/" + k))?.precision.unitRoundoff ?? 0
                if zip(a, b).allSatisfy({ abs($0 - $1) <= u * abs($0) }), gr.contains(where: { $0 != 0 }) { frozen.append(k); continue }
                let stride = max(1, a.count / 200_000)
                for j in Swift.stride(from: 0, to: a.count, by: stride) { g.append(gr[j]); p0.append(a[j]); d.append(b[j] - a[j]); owner.append(ki) }
            }
            if !frozen.isEmpty {
                let prefix = Self.commonPrefix(frozen)
                let all = prefix.isEmpty ? [] : trained.filter { $0.hasPrefix(prefix) }
                if !prefix.isEmpty, all.count == frozen.count {
                    candidates.append(Divergences.frozen(prefix))
                    lines.append(Explanation(kind: .fit, text: "\(prefix)* not updated (\(frozen.count) tensors with a gradient kept p1 = p0): left out of the optimizer, or frozen", divergences: ["frozen:\(prefix)"]))
                } else {
                    lines.append(Explanation(kind: .fit, text: "not updated although they have a gradient: " + frozen.prefix(6).joined(separator: ", ") + (frozen.count > 6 ? " and \(frozen.count - 6) more" : "")))
                }
            }
            if let fit = Self.adam(g: g, p0: p0, d: d, eps: cfg.adamEps) {
                let noBias = (1 - cfg.adamBeta1) / (1 - cfg.adamBeta2).squareRoot()
                let r = fit.lr / cfg.lr
                // per tensor: its own lr with the joint eps and decay
                var agree = Set<Int>(), seen = Set<Int>()
                var num = [Double](repeating: 0, count: trained.count), den = num
                for j in 0..<g.count {
                    let u = g[j] / (abs(g[j]) + fit.eps)
                    num[owner[j]] += -(d[j] + fit.decay * p0[j]) * u; den[owner[j]] += u * u
                    seen.insert(owner[j])
                }
                for k in seen where den[k] > 0 && abs(num[k] / den[k] / fit.lr - 1) < 1e-3 { agree.insert(k) }
                let inTensors = agree.count == seen.count ? "in every tensor (\(seen.count))" : "in \(agree.count) of \(seen.count) tensors"
                if abs(r / noBias - 1) < 1e-3 {
                    lines.append(Explanation(kind: .fit, text: String(format: "after_step/params moved by %.4g lr %@: AdamW without bias correction ((1 - beta1) / sqrt(1 - beta2) = %.4g)", r, inTensors, noBias), divergences: ["no-bias-correction"]))
                } else {
                    if abs(r - 1) > 1e-3 {
                        let v = Self.nice(fit.lr, rel: 1e-3)
                        let dv = Divergences.configValue("lr", v, cfg)
                        candidates.append(dv)
                        lines.append(Explanation(kind: .fit, text: "after_step/params consistent with \(dv.cause) \(inTensors)", divergences: [dv.id]))
                    }
                    if fit.epsDiffers {
                        let dv = Divergences.configValue("adam_eps", Self.nice(fit.eps, rel: 0.05), cfg)
                        candidates.append(dv)
                        lines.append(Explanation(kind: .fit, text: "after_step/params consistent with \(dv.cause) (its gradients near eps move by less than lr)", divergences: [dv.id]))
                    }
                }
                let wd = fit.decay / fit.lr
                // a decay the after-step rule could see: beyond twice its slack u 4 |p0| (else a
                // fit of rounding), and six standard errors
                let u = (try trained.compactMap { try e.side.get("after_step/params/" + $0)?.precision.unitRoundoff }.max()) ?? 0
                if abs(fit.decay - fit.lr * cfg.weightDecay) > max(6 * fit.decaySigma, 8 * u, 1e-3 * fit.lr * max(cfg.weightDecay, 1e-4)) {
                    let dv = Divergences.configValue("weight_decay", Self.nice(wd, rel: 0.02), cfg)
                    candidates.append(dv)
                    lines.append(Explanation(kind: .fit, text: String(format: "after_step/params consistent with %@ (p0 shrunk by lr wd = %.3g)", dv.cause, fit.decay), divergences: [dv.id]))
                }
            }
            if let a = try file("params/head.last_layer.weight_g"), let b = try file("after_step/params/head.last_layer.weight_g"), a != b {
                lines.append(Explanation(kind: .fit, text: "head.last_layer.weight_g was updated: trained, where SPEC fixes g at 1 (DINO's norm_last_layer=True)", divergences: ["weight-g-trained"]))
            }
        }

        // the EMA
        let teacherKeys = cfg.teacherParameters.filter { !$0.frozen }.map(\.key).filter { e.paths.contains("after_step/teacher/" + $0) }
        if !teacherKeys.isEmpty {
            var acc: [(de: Double, ee: Double, dd: Double)] = [(0, 0, 0), (0, 0, 0)]   // s = p1, s = p0
            for k in teacherKeys {
                guard let t0 = try file("teacher/" + k), let t1 = try file("after_step/teacher/" + k), let p0 = try file("params/" + k),
                      let p1 = try fileOrTruth("after_step/params/" + k), t0.count == t1.count, p0.count == t0.count, p1.count == t0.count else { continue }
                for (si, s) in [p1, p0].enumerated() {
                    for j in 0..<t0.count {
                        let dj = t1[j] - t0[j], ej = s[j] - t0[j]
                        acc[si].de += dj * ej; acc[si].ee += ej * ej; acc[si].dd += dj * dj
                    }
                }
            }
            if acc[0].dd == 0 {
                lines.append(Explanation(kind: .fit, text: "after_step/teacher equals the teacher before the step: the EMA was not applied (beta 1)"))
                candidates.append(Divergences.configValue("ema_beta", 1, cfg))
            } else if acc[0].ee > 0 {
                let res = acc.map { $0.ee > 0 ? $0.dd - $0.de * $0.de / $0.ee : .infinity }
                let before = res[1] < 0.25 * res[0]
                let kappa = before ? acc[1].de / acc[1].ee : acc[0].de / acc[0].ee
                let beta = 1 - kappa
                let student = before ? "the student before the AdamW step" : "the student after the step"
                if before {
                    let worse = res[1] > 0 ? String(format: "x%.3g", res[0] / res[1]) : "infinitely"
                    lines.append(Explanation(kind: .fit, text: String(format: "after_step/teacher consistent with an EMA from %@ (beta %.6g; the residual from the student after it is %@ larger)", student, beta, worse), divergences: ["ema-before-step"]))
                }
                if abs(kappa - cfg.emaBeta) < 1e-3 * cfg.emaBeta {
                    lines.append(Explanation(kind: .fit, text: String(format: "after_step/teacher moved by %.6g of the way to %@: the EMA reversed (beta for 1 - beta, config beta %g)", kappa, student, cfg.emaBeta), divergences: ["ema-reversed"]))
                } else if abs(kappa - (1 - cfg.emaBeta)) > 1e-3 * (1 - cfg.emaBeta) {
                    let dv = Divergences.configValue("ema_beta", 1 - Self.nice(kappa, rel: 1e-3), cfg)
                    candidates.append(dv)
                    lines.append(Explanation(kind: .fit, text: "after_step/teacher consistent with \(dv.cause), from \(student)", divergences: [dv.id]))
                }
            }
        }

        // the centers
        if let c1 = try file("after_step/center_cls"), let c0 = try file("inputs/center_cls"), let tc = try fileOrTruth("activations/" + ActivationName.teacherHeadCls) {
            let K = cfg.headOutDim
            var pairs: [([Double], [Double], [Double])] = [(c0, c1, Self.rowMean(tc, K))]
            if let p1 = try file("after_step/center_patch"), let p0 = try file("inputs/center_patch"),
               let tp = try fileOrTruth("activations/" + ActivationName.teacherHeadPatch) { pairs.append((p0, p1, Self.rowMean(tp, K))) }
            var de = 0.0, ee = 0.0
            for (a, b, mu) in pairs where a.count == K && b.count == K && mu.count == K {
                for j in 0..<K { de += (b[j] - mu[j]) * (a[j] - mu[j]); ee += (a[j] - mu[j]) * (a[j] - mu[j]) }
            }
            if ee > 0 {
                let m = de / ee
                if abs(m - cfg.centerMomentum) > 1e-3 * (1 - cfg.centerMomentum) {
                    let dv = Divergences.configValue("center_momentum", 1 - Self.nice(1 - m, rel: 1e-3), cfg)
                    candidates.append(dv)
                    lines.append(Explanation(kind: .fit, text: "after_step/center_cls\(pairs.count > 1 ? " and center_patch" : "") consistent with \(dv.cause)", divergences: [dv.id]))
                }
            }
        }
    }

    /// How close, in levels of a correct run, a closed form must bring a forward tensor.
    static let closedFormLevels = 2.0

    /// The mean of the rows (length K) of `x`.
    static func rowMean(_ x: [Double], _ K: Int) -> [Double] {
        let R = x.count / K
        var m = [Double](repeating: 0, count: K)
        for r in 0..<R { for j in 0..<K { m[j] += x[r * K + j] } }
        return m.map { $0 / Double(max(R, 1)) }
    }

    /// SPEC §4's H averaged over rows: -sum_k softmax((t - c) / tau_T)_k log_softmax(s / tau_S)_k.
    static func dino(s: [Double], t: [Double], c: [Double], K: Int, tauT: Double, tauS: Double) -> Double {
        let R = s.count / K
        var total = 0.0
        for r in 0..<R {
            var mt = -Double.infinity, ms = -Double.infinity
            for j in 0..<K { mt = max(mt, (t[r * K + j] - c[j]) / tauT); ms = max(ms, s[r * K + j] / tauS) }
            var zt = 0.0, zs = 0.0
            for j in 0..<K { zt += exp((t[r * K + j] - c[j]) / tauT - mt); zs += exp(s[r * K + j] / tauS - ms) }
            let lse = ms + log(zs)
            var h = 0.0
            for j in 0..<K { h -= exp((t[r * K + j] - c[j]) / tauT - mt) / zt * (s[r * K + j] / tauS - lse) }
            total += h
        }
        return total / Double(max(R, 1))
    }

    /// The roots of f over [1e-3, 10]: sign changes on a log grid, refined by bisection, and
    /// the roots near a local extremum of f that the grid steps over (a loss at its minimum in
    /// the temperature: the extremum is found by golden section, and the roots on either side
    /// of it, or the extremum itself where f is 0 there to 1e-9 of its scale).
    static func roots(_ f: (Double) -> Double) -> [Double] {
        let n = 400
        let xs = (0...n).map { 1e-3 * pow(1e4, Double($0) / Double(n)) }
        let ys = xs.map(f)
        func bisect(_ a: Double, _ b: Double) -> Double {
            var lo = a, hi = b, flo = f(a)
            for _ in 0..<60 {
                let mid = (lo + hi) / 2, fm = f(mid)
                if fm.sign == flo.sign { lo = mid; flo = fm } else { hi = mid }
            }
            return (lo + hi) / 2
        }
        var out: [Double] = []
        for i in 1...n where ys[i - 1].isFinite && ys[i].isFinite {
            if ys[i - 1].sign != ys[i].sign { out.append(bisect(xs[i - 1], xs[i])); continue }
            guard i < n, ys[i + 1].isFinite, ys[i].sign == ys[i + 1].sign,
                  abs(ys[i]) <= abs(ys[i - 1]), abs(ys[i]) <= abs(ys[i + 1]) else { continue }
            // golden section toward 0 in [x_{i-1}, x_{i+1}]
            let s = ys[i] > 0 ? 1.0 : -1.0, g = (5.0.squareRoot() - 1) / 2
            var a = xs[i - 1], b = xs[i + 1]
            for _ in 0..<80 {
                let c = b - g * (b - a), d = a + g * (b - a)
                if s * f(c) < s * f(d) { b = d } else { a = c }
            }
            let m = (a + b) / 2, fm = f(m)
            if fm.sign != ys[i].sign {
                out.append(bisect(xs[i - 1], m)); out.append(bisect(m, xs[i + 1]))
            } else if abs(fm) <= 1e-9 * max(abs(ys[i - 1]), 1) {
                out.append(m)
            }
        }
        return out
    }

    /// `x` rounded to 1, 2 or 3 significant digits when that is within `rel` of it (a value
    /// a person typed), else `x`.
    static func nice(_ x: Double, rel: Double) -> Double {
        guard x != 0, x.isFinite else { return x }
        for digits in 1...3 {
            let e = pow(10, floor(log10(abs(x))) - Double(digits - 1))
            let r = (x / e).rounded() * e
            if abs(r - x) <= rel * abs(x) { return Double(String(format: "%.\(digits)g", r)) ?? r }
        }
        return x
    }

    /// The longest common prefix of `keys` that ends at a ".".
    static func commonPrefix(_ keys: [String]) -> String {
        guard var p = keys.first else { return "" }
        for k in keys.dropFirst() { while !k.hasPrefix(p) { p.removeLast() } }
        if keys.count == 1 { return p }
        guard let dot = p.lastIndex(of: ".") else { return "" }
        return String(p[...dot])
    }

    /// AdamW's first step fitted: p1 - p0 = -lr u(g; eps) - decay p0, u = g / (|g| + eps).
    struct AdamFit { var lr: Double, decay: Double, eps: Double, decaySigma: Double, epsDiffers: Bool }
    static func adam(g: [Double], p0: [Double], d: [Double], eps cfgEps: Double) -> AdamFit? {
        guard g.count >= 2 else { return nil }
        func fit(_ eps: Double) -> (a: Double, b: Double, res: Double, sb: Double) {
            var uu = 0.0, up = 0.0, pp = 0.0, du = 0.0, dp = 0.0, dd = 0.0
            for j in 0..<g.count {
                let u = g[j] / (abs(g[j]) + eps), p = p0[j], x = d[j]
                uu += u * u; up += u * p; pp += p * p; du += x * u; dp += x * p; dd += x * x
            }
            let det = uu * pp - up * up
            var a: Double, b: Double
            if pp > 0, det > 1e-12 * uu * pp {
                a = -(du * pp - dp * up) / det; b = -(dp * uu - du * up) / det
            } else {
                a = uu > 0 ? -du / uu : 0; b = 0
            }
            let res = max(dd + 2 * a * du + 2 * b * dp + a * a * uu + 2 * a * b * up + b * b * pp, 0)
            let sb = det > 0 ? (res / Double(max(g.count - 2, 1)) * uu / det).squareRoot() : .infinity
            return (a, b, res, sb)
        }
        let atCfg = fit(cfgEps)
        var best = (eps: cfgEps, f: atCfg)
        for i in 0...100 {
            let eps = pow(10, -12 + Double(i) / 10)
            let f = fit(eps)
            if f.res < best.f.res { best = (eps, f) }
        }
        let differs = best.eps != cfgEps && atCfg.res > 2 * best.f.res
        let use = differs ? best : (eps: cfgEps, f: atCfg)
        guard use.f.a.isFinite, use.f.a != 0 else { return nil }
        return AdamFit(lr: use.f.a, decay: use.f.b, eps: use.eps, decaySigma: use.f.sb, epsDiffers: differs)
    }
}
