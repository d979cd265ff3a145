import Glibc
import SDDiTCore

/// The inputs of one training step (SPEC §7 /inputs), in Double as files hold them.
public struct FastStepInputs: Sendable {
    public var x0: [Double], labels: [Int], sigmaS: [Double], noiseS: [Double], noiseT: [Double]
    /// [N][T], 1 = hidden
    public var mask: [[Int]]
    public init(x0: [Double], labels: [Int], sigmaS: [Double], noiseS: [Double], noiseT: [Double], mask: [[Int]]) {
        self.x0 = x0; self.labels = labels; self.sigmaS = sigmaS; self.noiseS = noiseS; self.noiseT = noiseT; self.mask = mask
    }
}

/// What one fast training step reports.
public struct FastStepResult: Sendable {
    public var losses: [String: Double]
    /// A non-finite gradient was found after unscaling: GradScaler skipped the AdamW step.
    public var skipped: Bool
    public var lossScale: Float
}

extension FastModel {

    /// One training step (SPEC §5): forward, losses, backward (with the loss scale), unscale,
    /// AdamW unless a gradient is non-finite, EMA, centers. Inputs' centers are replaced by the model's.
    /// One training step as a training loop runs it: GradScaler decides on the update.
    public func trainStep(_ I: FastStepInputs, tauT: Double? = nil, emaBeta: Double? = nil) throws -> FastStepResult {
        try requireOptimizer()
        var r = try forwardBackward(I, tauT: tauT)
        r.skipped = !scaler.update(foundNonFinite: r.skipped)
        applyUpdate(step: !r.skipped, emaBeta: emaBeta)
        return r
    }

    /// The step as `oracle diff` runs it: when the scaled gradients overflow, back off the
    /// scale and redo the same step (GradScaler reaches the same scale over consecutive
    /// skipped steps), at most `maxRetries` times; then update.
    public func trainStepFindingScale(_ I: FastStepInputs, maxRetries: Int = 24) throws -> FastStepResult {
        try requireOptimizer()
        let r = try forwardBackwardFindingScale(I, maxRetries: maxRetries)
        applyUpdate(step: !r.skipped, emaBeta: nil)
        return r
    }

    /// `trainStepFindingScale` up to the update: forward and backward, backing off the loss
    /// scale and redoing them while the gradients overflow (at most `maxRetries` times), then
    /// GradScaler's decision; `skipped` in the result: no AdamW step is to be taken.
    func forwardBackwardFindingScale(_ I: FastStepInputs, maxRetries: Int = 24) throws -> FastStepResult {
        var r = try forwardBackward(I, tauT: nil)
        var tries = 0
        while r.skipped && scaler.enabled && tries < maxRetries {
            _ = scaler.update(foundNonFinite: true)
            r = try forwardBackward(I, tauT: nil)
            tries += 1
        }
        r.skipped = !scaler.update(foundNonFinite: r.skipped)
        return r
    }

    /// Forward, losses and backward with the current loss scale; gradients are unscaled.
    /// `skipped` in the result reports a non-finite gradient (nothing is updated here).
    public func forwardBackward(_ I: FastStepInputs, tauT: Double? = nil) throws -> FastStepResult {
        try validate(I)
        let N = I.labels.count, C = cfg.inChannels, Hs = cfg.inputSize, K = cfg.headOutDim, D = cfg.hiddenSize
        let per = C * Hs * Hs, Tn = cfg.tokens
        let keep = try visibleTokens(I.mask, N: N), V = keep[0].count
        activations = [:]
        try loadStreamedTeacher()
        for g in grads.values { g.zero() }
        // x = x0 + sigma n and D = c_skip x + c_out F(c_in x) in Double; D stored in float32
        let sd = cfg.sigmaData
        let coef = I.sigmaS.map { s in EDMCoefficients<Double>(sigma: s, sigmaData: sd) }
        let xS = EDMNoise.noised(x0: I.x0, sigma: I.sigmaS, noise: I.noiseS)
        let (F, denoised) = try edmPrecond(xS, coef, xIn: ws.get("student.x_in", [N, C, Hs, Hs])) { xIn, cNoise in
            try sdditNetwork(xIn, cNoise: cNoise, labels: I.labels, keep: keep)
        }
        let Dt = ws.get(ActivationName.D, [N, C, Hs, Hs])
        for j in 0..<(N * per) { Dt.p[j] = Float(denoised[j]) }
        if prec.isPure { prec.round(Dt.p, Dt.count) }
        try out(ActivationName.D, "D = c_skip x + c_out F", Dt, [(ActivationName.F, F)])
        remember(ActivationName.F, F); remember(ActivationName.D, Dt)
        // EDM loss: lambda in float32 (autocast) or the half type (pure)
        let lam: [Float] = coef.map { c in prec.isPure ? prec.round(Float(c.lambda)) : Float(c.lambda) }
        var LG = 0.0
        for n in 0..<N { for i in 0..<per {
            let e: Float = Dt.p[n * per + i] - Float(I.x0[n * per + i])
            let w: Float = lam[n] * e * e
            LG += Double(w)
        } }
        LG /= Double(N * per)
        // heads
        let sHead = try studentHead.forward(self, student, studentEncoder.out)   // [N(1+V), K]
        let xT = ws.get("teacher.x_in", [N, C, Hs, Hs])
        let sT = cfg.teacherSigma, eT = EDMCoefficients<Double>(sigma: sT, sigmaData: sd)
        for j in 0..<(N * per) { xT.p[j] = Float(eT.cIn * (I.x0[j] + sT * I.noiseT[j])) }
        if prec.isPure { prec.round(xT.p, xT.count) }
        let all = Array(repeating: Array(0..<Tn), count: N)
        let tOut = try teacherEncoder.forward(self, teacher, xIn: xT, cNoise: Array(repeating: eT.cNoise, count: N),
                                              labels: I.labels, keep: all)
        let tSel = ws.get("teacher.head.in", [N, 1 + V, D])
        for n in 0..<N {
            (tSel.p + n * (1 + V) * D).update(from: tOut.p + n * (1 + Tn) * D, count: D)
            for (v, t) in keep[n].enumerated() {
                (tSel.p + (n * (1 + V) + 1 + v) * D).update(from: tOut.p + (n * (1 + Tn) + 1 + t) * D, count: D)
            }
        }
        let tHead = try teacherHead.forward(self, teacher, tSel)
        if record {
            func split(_ h: FT) -> ([Float], [Float]) {
                var c = [Float](), p = [Float]()
                for n in 0..<N {
                    c += UnsafeBufferPointer(start: h.p + n * (1 + V) * K, count: K)
                    p += UnsafeBufferPointer(start: h.p + (n * (1 + V) + 1) * K, count: V * K)
                }
                return (c, p)
            }
            let (sc, sp) = split(sHead), (tc, tp) = split(tHead)
            activations[ActivationName.headCls] = ([N, K], sc); activations[ActivationName.headPatch] = ([N, V, K], sp)
            activations[ActivationName.teacherHeadCls] = ([N, K], tc); activations[ActivationName.teacherHeadPatch] = ([N, V, K], tp)
        }
        releaseStreamedTeacher()
        // DINO cross-entropy per row (float32 softmax / log-softmax, Double sums), and its gradient
        var tauS = Float(cfg.tauS), tT = Float(tauT ?? cfg.tauT)
        if variant.swapTemperatures { swap(&tauS, &tT) }   // a planted bug
        let scale = scaler.scale
        let wD = discriminativeWeight, scaleD = scale * wD   // wD = 1: exactly `scale`
        let dHead = ws.get("d." + ActivationName.Head.out(ActivationName.student), [N * (1 + V), K])
        var Lcls = 0.0, Lpatch = 0.0
        var newCls = [Double](repeating: 0, count: K), newPatch = [Double](repeating: 0, count: K)
        let R = N * (1 + V)
        let hD = dinoRows(t: tHead.p, s: sHead.p, N: N, V: V, K: K, tauT: tT, tauS: tauS, gradScale: scaleD, dOut: dHead.p)
        for r in 0..<R {
            let isCls = r % (1 + V) == 0
            if isCls { Lcls += hD[r] / Double(N) } else { Lpatch += hD[r] / Double(N * V) }
            let t = tHead.p + r * K
            if isCls { for j in 0..<K { newCls[j] += Double(t[j]) } } else { for j in 0..<K { newPatch[j] += Double(t[j]) } }
        }
        let total = LG + Double(wD) * Lcls + Double(wD) * Lpatch   // wD = 1: exactly LG + Lcls + Lpatch
        let losses = [LossName.generative: LG, LossName.disCls: Lcls, LossName.disPatch: Lpatch, LossName.total: total]
        if monitor.anomaly, !total.isFinite {
            let bad = [LossName.generative: LG, LossName.disCls: Lcls, LossName.disPatch: Lpatch].first { !$0.value.isFinite }!
            throw NonFiniteError(tensor: ActivationName.loss(bad.key), operation: bad.key == LossName.generative
                                    ? "lambda(sigma) (D - x0)^2, lambda in \(prec.isPure ? "the half type" : "float32")" : "DINO cross-entropy",
                                 index: [], shape: [], value: Float(bad.value),
                                 inputs: [("lambda", lam.map(abs).max() ?? 0), ("sigma_min of batch", Float(I.sigmaS.min() ?? 0))])
        }
        // backward (everything scaled by the loss scale)
        // The head's output is a half-type matmul output: its gradient enters the backward
        // pass in the half type (autocast casts the float32 loss gradient back).
        prec.round(dHead.p, dHead.count)
        try gradOut(ActivationName.headOutRows, "DINO cross-entropy x loss scale \(scale), cast to the half type", dHead)
        let dEncHead = try studentHead.backward(self, student, grads, dOut: dHead)   // [N(1+V), D]
        let dD = ws.get("d." + ActivationName.D, [N, C, Hs, Hs]), dOut = ws.get("d." + ActivationName.final(ActivationName.student), [N, Tn, cfg.patchDim])
        let numel = Float(N * per)
        for n in 0..<N { for i in 0..<per {
            let j = n * per + i
            let e: Float = Dt.p[j] - Float(I.x0[j])
            let g: Float = scale * 2 * lam[n] * e / numel
            dD.p[j] = g * Float(coef[n].cOut)
        } }
        // F is the final linear's half-type output: dL/dF enters the backward pass in that type.
        prec.round(dD.p, dD.count)
        try gradOut(ActivationName.F, "EDM loss x c_out x loss scale \(scale), cast to the half type", dD)
        unpatchify(dOut, dD, inverse: true)
        let dsiluC = ws.get("d.student.siluC", [N, D], zero: true)
        let (dEnc, dTokens) = try decoder.backward(self, student, grads, dOut: dOut, dEncHead: dEncHead, dsiluC: dsiluC)
        try studentEncoder.backward(self, student, grads, dOut: dEnc, dTokens: dTokens, dsiluC: dsiluC)
        // unscale, check, step
        let bad = unscaleGradients(scale), found = bad != nil
        if let (key, i) = bad, monitor.anomaly && !(monitor.anomalyLeavesBackwardToScaler && scaler.enabled) {
            let g = grads[key]!
            throw NonFiniteError(tensor: ActivationName.parameterGradient(key), operation: "parameter gradient (unscaled by \(scale))",
                                 index: unravel(i, g.shape), shape: g.shape, value: g.p[i], inputs: [])
        }
        pendingCenters = (newCls.map { Float($0 / Double(N)) }, newPatch.map { Float($0 / Double(N * V)) })
        return FastStepResult(losses: losses, skipped: found, lossScale: scale)
    }

    /// DINO cross-entropy per row r of N (1 + V) head outputs (CLS then V patches per sample):
    /// h_r = -sum_j q_j log p_j, q = softmax((t - C) / tau_T) with C the CLS or patch center,
    /// p = softmax(s / tau_S) (float32 softmax / log-softmax, Double sum); and its gradient
    /// dOut_r = gradScale (p - q) / (tau_S rows), rows = N (CLS) or N V (patches). Rows are
    /// independent: any split over threads gives the same numbers.
    func dinoRows(t: UnsafePointer<Float>, s: UnsafePointer<Float>, N: Int, V: Int, K: Int, tauT tT: Float, tauS: Float,
                  gradScale scaleD: Float, dOut: UnsafeMutablePointer<Float>) -> [Double] {
        let R = N * (1 + V)
        var hD = [Double](repeating: 0, count: R)
        let cc = centerCls, cp = centerPatch
        hD.withUnsafeMutableBufferPointer { hb in
            let hp = UncheckedSendable(hb.baseAddress!)
            parallelRanges(R, minPerThread: 16) { lo, hi in
                var qb = [Float](repeating: 0, count: K), pb = [Float](repeating: 0, count: K)
                for r in lo..<hi {
                    let isCls = r % (1 + V) == 0
                    let center = isCls ? cc : cp
                    let t = t + r * K, s = s + r * K
                    var mt = -Float.infinity, ms = -Float.infinity
                    for j in 0..<K { qb[j] = (t[j] - center[j]) / tT; mt = max(mt, qb[j]); pb[j] = s[j] / tauS; ms = max(ms, pb[j]) }
                    var zt: Float = 0, zs: Float = 0
                    for j in 0..<K { qb[j] = expf(qb[j] - mt); zt += qb[j]; zs += expf(pb[j] - ms) }
                    let lse = ms + logf(zs)
                    var h = 0.0
                    for j in 0..<K { qb[j] /= zt; h -= Double(qb[j] * (pb[j] - lse)) }
                    let rows = Float(isCls ? N : N * V)
                    for j in 0..<K {
                        let pj = expf(pb[j] - lse)
                        dOut[r * K + j] = scaleD * (pj - qb[j]) / (tauS * rows)
                    }
                    hp.value[r] = h
                }
            }
        }
        return hD
    }

    /// Divides every gradient by the loss scale (skipped at scale 1, where it is exact),
    /// rounds it in pure modes, and returns the first non-finite gradient's key and index.
    func unscaleGradients(_ scale: Float) -> (key: String, index: Int)? {
        var first: (String, Int)?
        for (key, g) in grads {
            if scale != 1 { let gp = g.p; parallelRanges(g.count) { lo, hi in for i in lo..<hi { gp[i] /= scale } } }
            if prec.isPure { prec.round(g.p, g.count) }
            if first == nil, !vallFinite(g.p, g.count) { first = (key, (0..<g.count).first { !g.p[$0].isFinite }!) }
        }
        return first
    }

    /// AdamW (when `step`), EMA, and the center update with this step's teacher outputs.
    func applyUpdate(step: Bool, emaBeta: Double?) {
        precondition(hasOptimizer, "FastModel: a forward-and-backward-only model cannot take a training step")
        if step { adamW() }
        ema(Float(emaBeta ?? cfg.emaBeta))
        updateCenters()
    }

    /// The centers' update with this step's teacher outputs.
    func updateCenters() {
        let m = Float(cfg.centerMomentum)
        for j in 0..<cfg.headOutDim {
            centerCls[j] = m * centerCls[j] + (1 - m) * pendingCenters.cls[j]
            centerPatch[j] = m * centerPatch[j] + (1 - m) * pendingCenters.patch[j]
        }
    }

    /// PyTorch's AdamW in float32.
    func adamW() {
        adamStep += 1
        for key in grads.keys { adamW(key, step: adamStep, keepingMoments: true) }
    }

    /// AdamW on the student tensor `key` at step t:
    ///   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    ///   p <- p - lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    /// with the model's moments, or (the streamed step, `keepingMoments` false: its first
    /// step) from zero moments not kept, the same arithmetic; nothing for a fixed tensor.
    func adamW(_ key: String, step: Int, keepingMoments: Bool) {
        guard let g = grads[key] else { return }
        let lr = Float(cfg.lr), b1 = Float(cfg.adamBeta1), b2 = Float(cfg.adamBeta2), eps = Float(cfg.adamEps), wd = Float(cfg.weightDecay)
        let bc1 = 1 - powf(b1, Float(step)), bc2 = (1 - powf(b2, Float(step))).squareRoot()
        let p = student[key]!.p, gp = g.p
        if keepingMoments {
            let m = adamM[key]!.p, v = adamV[key]!.p
            parallelRanges(g.count) { lo, hi in
                for i in lo..<hi {
                    p[i] *= 1 - lr * wd
                    m[i] = b1 * m[i] + (1 - b1) * gp[i]
                    v[i] = b2 * v[i] + (1 - b2) * gp[i] * gp[i]
                    p[i] -= lr / bc1 * m[i] / (v[i].squareRoot() / bc2 + eps)
                }
            }
        } else {
            parallelRanges(g.count) { lo, hi in
                for i in lo..<hi {
                    let m0: Float = 0, v0: Float = 0
                    p[i] *= 1 - lr * wd
                    let m = b1 * m0 + (1 - b1) * gp[i]
                    let v = b2 * v0 + (1 - b2) * gp[i] * gp[i]
                    p[i] -= lr / bc1 * m / (v.squareRoot() / bc2 + eps)
                }
            }
        }
        if prec.isPure { prec.round(p, g.count) }
    }

    /// teacher <- beta teacher + (1 - beta) student (encoder + head keys).
    func ema(_ beta: Float) {
        for key in teacher.keys { ema(key, beta) }
    }

    /// `ema(beta)` on the teacher tensor `key` alone.
    func ema(_ key: String, _ beta: Float) {
        let t = teacher[key]!, sp = student[key]!.p, tp = t.p
        parallelRanges(t.count) { lo, hi in for i in lo..<hi { tp[i] = beta * tp[i] + (1 - beta) * sp[i] } }
        if prec.isPure { prec.round(t.p, t.count) }
    }

    /// D(x; sigma, y) with every token visible; x, sigma and D in Double (EDM keeps the
    /// sampler's state in float64), the network in float32 / the chosen mode.
    public func denoise(_ x: [Double], sigma: Double, labels: [Int]) throws -> [Double] {
        try denoise(x, sigmas: Array(repeating: sigma, count: labels.count), labels: labels)
    }

    /// D(x; sigma_n, y) for every sample at its own sigma, every token visible (the sampler's
    /// denoiser, SPEC §2.10); x and D in Double, the network in this model's precision.
    public func denoise(_ x: [Double], sigmas: [Double], labels: [Int]) throws -> [Double] {
        try validateDenoise(x, sigmas: sigmas, labels: labels)
        let N = labels.count, Hs = cfg.inputSize
        let e = sigmas.map { EDMCoefficients<Double>(sigma: $0, sigmaData: cfg.sigmaData) }
        let saved = record; record = false; defer { record = saved }
        let all = Array(repeating: Array(0..<cfg.tokens), count: N)
        return try edmPrecond(x, e, xIn: ws.get("student.x_in", [N, cfg.inChannels, Hs, Hs])) { xIn, cNoise in
            try sdditNetwork(xIn, cNoise: cNoise, labels: labels, keep: all)
        }.D
    }

    /// The Heun sampler (SPEC §6) with optional guidance; returns x after every step.
    public func sample(xInit: [Double], labels: [Int], sigmas: [Double], cfgScale: Double?) throws -> [[Double]] {
        try validateSample(xInit: xInit, labels: labels, sigmas: sigmas)
        // Core's Heun integrator and guidance (SPEC §6) over this model's denoiser
        let N = labels.count, shape = [xInit.count]
        func Dw(_ x: Tensor<Double>, _ s: Double) throws -> Tensor<Double> {
            let d = try denoise(x.data, sigma: s, labels: labels)
            guard let w = cfgScale else { return Tensor(shape: shape, data: d) }
            let d0 = try denoise(x.data, sigma: s, labels: Array(repeating: cfg.numClasses, count: N))
            return Tensor(shape: shape, data: (0..<d.count).map { HeunSampler.guided(conditional: d[$0], unconditional: d0[$0], scale: w) })
        }
        return try HeunSampler.sample(xInit: Tensor(shape: shape, data: xInit), sigmas: sigmas, denoise: Dw).map(\.data)
    }

    /// Current parameters as Double tensors (student or teacher).
    public func parameters(teacher useTeacher: Bool = false) -> [String: Tensor<Double>] {
        (useTeacher ? teacher : student).mapValues { Tensor(shape: $0.shape, data: $0.array().map { Double($0) }) }
    }
    /// The trainable student tensors' values (to measure a step's update against).
    public func trainableSnapshot() -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for key in grads.keys { out[key] = student[key]!.array() }
        return out
    }

    /// The trainable student tensor `key` (nil for a fixed one).
    public func trainable(_ key: String) -> UnsafeBufferPointer<Float>? {
        guard grads[key] != nil, let t = student[key] else { return nil }
        return UnsafeBufferPointer(start: t.p, count: t.count)
    }

    /// Records each parameter gradient times `scale` (as a GradScaler run stores it) in the
    /// monitor's headroom statistics as "grad KEY".
    public func recordGradientHeadroom(scale: Float) {
        for spec in cfg.studentParameters { if let g = grads[spec.key] { monitor.record(ActivationName.gradientHeadroom(spec.key), g.p, g.count, scale: scale) } }
    }
    public func gradients() -> [String: Tensor<Double>] {
        grads.mapValues { Tensor(shape: $0.shape, data: $0.array().map { Double($0) }) }
    }
}
