import Glibc
import SDDiTCore

// One SD-DiT training step (SPEC §4-5; the reference's Objective and TrainingState.step), by
// its parts:
//   student: x = x0 + sigma n (Core's EDMNoise), D = c_skip x + c_out F(c_in x) over the
//            visible tokens (Layers/FastEDMPrecond.swift, the encoder, decoder, unpatchify)
//   L_G      Layers/FastEDMLoss.swift
//   teacher: x_T at sigma_T over every token, the rows the heads share (Layers/FastTeacherView.swift)
//   L_D^cls, L_D^patch and the batch centers   Layers/FastDINOLoss.swift
//   backward with the loss scale s, from both losses; unscale (Step/FastUnscale.swift)
//   GradScaler's decision, AdamW (Step/FastAdamW.swift), EMA (Step/FastEMA.swift), centers.
// Total L = L_G + w (L_D^cls + L_D^patch), w the discriminative weight (1: SPEC).

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
    /// One training step as a training loop runs it (SPEC §5): forward, losses, backward with
    /// the loss scale, unscale; GradScaler decides on the update (AdamW only when every
    /// gradient is finite), then the EMA and the centers. The centers are the model's own.
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
        let Tn = cfg.tokens, ws = ctx.ws
        let keep = try visibleTokens(I.mask, N: N), V = keep[0].count
        activations = [:]
        try loadStreamedTeacher()
        for g in grads.values { g.zero() }
        // student: D = c_skip x + c_out F(c_in x), x = x0 + sigma n (Double); D stored in float32
        let coef = I.sigmaS.map { s in EDMCoefficients<Double>(sigma: s, sigmaData: cfg.sigmaData) }
        let xS = EDMNoise.noised(x0: I.x0, sigma: I.sigmaS, noise: I.noiseS)
        let (F, denoised) = try FastEDMPrecond.forward(ctx, xS, coef, xIn: ws.get("student.x_in", [N, C, Hs, Hs])) { xIn, cNoise in
            try sdditNetwork(xIn, cNoise: cNoise, labels: I.labels, keep: keep)
        }
        let Dt = ws.get(ActivationName.D, [N, C, Hs, Hs])
        FastEDMPrecond.store(ctx, denoised, Dt)
        try ctx.out(ActivationName.D, "D = c_skip x + c_out F", Dt, [(ActivationName.F, F)])
        ctx.remember(ActivationName.F, F); ctx.remember(ActivationName.D, Dt)
        let lam = variant.edmUnweighted ? coef.map { _ in 1 } : FastEDMLoss.weights(prec, coef)
        let LG = FastEDMLoss.forward(D: Dt, x0: I.x0, lambda: lam)
        // heads: the student's rows, the teacher's view and rows
        let sHead = try studentHead.forward(ctx, studentEncoder.out)   // [N(1+V), K]
        let xT = ws.get("teacher.x_in", [N, C, Hs, Hs])
        let eT = FastTeacherView.input(ctx, x0: I.x0, noise: I.noiseT, xT)
        let tOut = try teacherEncoder.forward(ctx, xIn: xT, cNoise: Array(repeating: variant.cNoise(eT), count: N), labels: I.labels,
                                              keep: Array(repeating: Array(0..<Tn), count: N))
        let tSel = ws.get("teacher.head.in", [N, 1 + V, D])
        FastTeacherView.gather(tOut, keep: keep, tSel)
        let tHead = try teacherHead.forward(ctx, tSel)
        if record {
            let (sc, sp) = FastDINOLoss.split(sHead, N: N, V: V), (tc, tp) = FastDINOLoss.split(tHead, N: N, V: V)
            activations[ActivationName.headCls] = ([N, K], sc); activations[ActivationName.headPatch] = ([N, V, K], sp)
            activations[ActivationName.teacherHeadCls] = ([N, K], tc); activations[ActivationName.teacherHeadPatch] = ([N, V, K], tp)
        }
        releaseStreamedTeacher()
        // the DINO losses and their gradient (scaled by the loss scale times the weight)
        var tauS = Float(cfg.tauS), tT = Float(tauT ?? cfg.tauT)
        if variant.swapTemperatures { swap(&tauS, &tT) }   // a planted bug
        let scale = scaler.scale
        let wD = discriminativeWeight   // wD = 1: exactly `scale`, and L = LG + Lcls + Lpatch
        let dHead = ws.get("d." + ActivationName.Head.out(ActivationName.student), [N * (1 + V), K])
        let dino = FastDINOLoss.forwardBackward(t: tHead, s: sHead, N: N, V: V, centers: lossCenters(tHead, N: N, V: V), tauT: tT, tauS: tauS,
                                                gradScale: scale * wD, dOut: dHead)
        let total = LG + Double(wD) * dino.cls + Double(wD) * dino.patch
        let losses = [LossName.generative: LG, LossName.disCls: dino.cls, LossName.disPatch: dino.patch, LossName.total: total]
        if monitor.anomaly, !total.isFinite {
            // the first non-finite loss in SPEC's order
            let (name, value) = [(LossName.generative, LG), (LossName.disCls, dino.cls), (LossName.disPatch, dino.patch)].first { !$0.1.isFinite }!
            throw NonFiniteError(tensor: ActivationName.loss(name), operation: name == LossName.generative
                                    ? "lambda(sigma) (D - x0)^2, lambda in \(prec.isPure ? "the half type" : "float32")" : "DINO cross-entropy",
                                 index: [], shape: [], value: Float(value),
                                 inputs: [("lambda", lam.map(abs).max() ?? 0), ("sigma_min of batch", Float(I.sigmaS.min() ?? 0))])
        }
        // backward (everything scaled by the loss scale). The head's output is a half-type
        // matmul output: its gradient enters the backward pass in the half type (autocast
        // casts the float32 loss gradient back).
        prec.round(dHead.p, dHead.count)
        try ctx.gradOut(ActivationName.headOutRows, "DINO cross-entropy x loss scale \(scale), cast to the half type", dHead)
        let dEncHead = try studentHead.backward(ctx, dOut: dHead)   // [N(1+V), D]
        let dF = ws.get("d." + ActivationName.D, [N, C, Hs, Hs])
        FastEDMLoss.backward(D: Dt, x0: I.x0, lambda: lam, scale: scale, dD: dF)
        try FastEDMPrecond.backward(ctx, coef, dF, F: ActivationName.F, scale: scale)
        let dOut = ws.get("d." + ActivationName.final(ActivationName.student), [N, Tn, cfg.patchDim])
        FastUnpatchify.backward(cfg, dImage: dF, dTokens: dOut, cij: variant.unpatchifyCIJ)
        let dsiluC = ws.get("d.student.siluC", [N, D], zero: true)
        let (dEnc, dTokens) = try decoder.backward(ctx, dOut: dOut, dEncHead: dEncHead, dsiluC: dsiluC)
        try studentEncoder.backward(ctx, dOut: dEnc, dTokens: dTokens, dsiluC: dsiluC)
        // unscale and check
        let bad = FastUnscale.apply(ctx, grads, keys: trainableKeys, scale: scale)
        if let (key, i) = bad, monitor.anomaly && !(monitor.anomalyLeavesBackwardToScaler && scaler.enabled) {
            let g = grads.tensor(key)
            throw NonFiniteError(tensor: ActivationName.parameterGradient(key), operation: "parameter gradient (unscaled by \(scale))",
                                 index: unravel(i, g.shape), shape: g.shape, value: g.p[i], inputs: [])
        }
        centers.pending = dino.batchCenters
        return FastStepResult(losses: losses, skipped: bad != nil, lossScale: scale)
    }

    /// The centers the DINO losses use: the current ones (SPEC §5); under a divergence none,
    /// or those after this step's update.
    func lossCenters(_ tHead: FT, N: Int, V: Int) -> FastCenters {
        var c = centers
        if variant.noCentering {
            c.cls = c.cls.map { _ in 0 }; c.patch = c.patch.map { _ in 0 }
        } else if variant.centersBeforeLoss {
            c.pending = FastDINOLoss.batchMeans(tHead, N: N, V: V)
            c.update(momentum: cfg.centerMomentum)
        }
        return c
    }

    /// AdamW (when `step`), EMA, and the center update with this step's teacher outputs
    /// (the EMA before AdamW under the divergence `emaBeforeStep`).
    func applyUpdate(step: Bool, emaBeta: Double?) {
        guard let adam else { preconditionFailure("FastModel: a forward-and-backward-only model cannot take a training step") }
        let beta = Float(emaBeta ?? cfg.emaBeta)
        func ema() { for (key, t) in teacher { FastEMA.blend(ctx, teacher: t, student: student.tensor(key), beta: beta) } }
        if variant.emaBeforeStep { ema() }
        if step { adam.update(ctx, params: student, grads: grads) }
        if !variant.emaBeforeStep { ema() }
        centers.update(momentum: cfg.centerMomentum)
    }
}
