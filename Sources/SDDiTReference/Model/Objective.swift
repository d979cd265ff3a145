// The SD-DiT objective of SPEC §3-4: student D(x_S) with masking, EDM loss, teacher
// encoder at sigma_T, DINO head on CLS and visible patch tokens, and the hand-written
// backward of the total loss to every trainable student parameter.

public struct ObjectiveResult<T: RefScalar> {
    public var activations: Activations<T>
    public var losses: [String: T]
    /// d total / d trainable student parameter (empty when not requested; without those
    /// already handed to `finalGradients`).
    public var grads: [String: Tensor<T>]
    public var newCenterCls: Tensor<T>
    public var newCenterPatch: Tensor<T>
}

public enum Objective {
    /// Forward (and, with `gradients`, backward) of L = L_G + L_D^cls + L_D^patch. With
    /// `finalGradients`, each part's gradients (head, final layer, each decoder and encoder
    /// block, decoder layer) go there as soon as its backward is done, and `grads` holds the rest.
    public static func run<T: RefScalar>(_ cfg: ModelConfig, student P: Parameters<T>, teacher TP: Parameters<T>,
                                         inputs I: StepInputs<T>, gradients: Bool = true,
                                         recordActivations: Bool = true,
                                         finalGradients: ((String, Tensor<T>) -> Void)? = nil) throws -> ObjectiveResult<T> {
        let N = I.x0.shape[0], K = cfg.headOutDim, sd = T(cfg.sigmaData)
        let keep = try visibleIndices(mask: I.mask, tokens: cfg.tokens, batch: N)
        let V = keep[0].count
        var acts: Activations<T>? = recordActivations ? [:] : nil

        // Student view x_S = x0 + sigma_S n_S; D = c_skip x_S + c_out F(c_in x_S)
        let per = I.x0.count / N
        let xS = Tensor(shape: I.x0.shape, data: EDMNoise.noised(x0: I.x0.data, sigma: I.sigmaS, noise: I.noiseS.data))
        let (D, F, coef, enc, dec) = Denoiser.preconditioned(cfg, P, x: xS, sigma: I.sigmaS, labels: I.labels, keep: keep, acts: &acts)
        let LG = EDMLoss.forward(D: D, x0: I.x0, sigma: I.sigmaS, sigmaData: sd)

        // Student head on every encoder output row: row 0 is CLS, rows 1...V the visible patches.
        let head = ProjectionHead(enc.out, P)                                       // [N, 1+V, K]
        let (sCls, sPatch) = splitClsPatch(head.out)

        // Teacher: EMA encoder on x_T at sigma_T, no mask, same labels; head at CLS and the
        // student's visible positions. No gradient.
        let sT = T(cfg.teacherSigma), cT = EDMCoefficients(sigma: sT, sigmaData: sd)
        var xT = I.x0
        for i in 0..<xT.count { xT.data[i] = (xT.data[i] + sT * I.noiseT.data[i]) * cT.cIn }
        let all = Array(repeating: Array(0..<cfg.tokens), count: N)
        let tenc = Encoder(cfg, xIn: xT, cNoise: Array(repeating: cT.cNoise, count: N), labels: I.labels,
                           keep: all, TP, acts: &acts, prefix: ActivationName.teacher, keepCaches: false)
        let rows = keep.map { [0] + $0.map { $0 + 1 } }                             // CLS + visible
        let tSel = TokenGather.forward(tenc.out, keep: rows)                         // [N, 1+V, D]
        let (tCls, tPatch) = splitClsPatch(ProjectionHead(tSel, TP).out)

        let tauS = T(cfg.tauS), tauT = T(cfg.tauT)
        let qCls = DINOCrossEntropy.teacherProbs(tCls, center: I.centerCls, tauT: tauT)
        let qPatch = DINOCrossEntropy.teacherProbs(tPatch, center: I.centerPatch, tauT: tauT)
        let Lcls = DINOCrossEntropy.forward(student: sCls, teacherProbs: qCls, tauS: tauS)
        let Lpatch = DINOCrossEntropy.forward(student: sPatch, teacherProbs: qPatch, tauS: tauS)

        // Centers (SPEC §5): this step's teacher outputs, momentum m.
        let m = T(cfg.centerMomentum)
        var ncc = I.centerCls, ncp = I.centerPatch
        for k in 0..<K {
            var a: T = 0, b: T = 0
            for n in 0..<N { a += tCls.data[n * K + k] }
            for r in 0..<(N * V) { b += tPatch.data[r * K + k] }
            ncc.data[k] = m * ncc.data[k] + (1 - m) * a / T(N)
            ncp.data[k] = m * ncp.data[k] + (1 - m) * b / T(N * V)
        }

        if acts != nil {
            acts![ActivationName.F] = F; acts![ActivationName.D] = D
            acts![ActivationName.headCls] = sCls; acts![ActivationName.headPatch] = sPatch
            acts![ActivationName.teacherHeadCls] = tCls; acts![ActivationName.teacherHeadPatch] = tPatch
        }
        let losses: [String: T] = [LossName.generative: LG, LossName.disCls: Lcls,
                                   LossName.disPatch: Lpatch, LossName.total: LG + Lcls + Lpatch]
        var result = ObjectiveResult(activations: acts ?? [:], losses: losses, grads: [:],
                                     newCenterCls: ncc, newCenterPatch: ncp)
        guard gradients else { return result }

        // Backward, the forward read bottom-up (d total / d each loss = 1).
        var grads = Gradients<T>(cfg.studentParameters)
        grads.onFinal = finalGradients   // a part's gradients handed over (and released) once its backward is done
        var dsCls = Tensor<T>.zeros(like: sCls), dsPatch = Tensor<T>.zeros(like: sPatch)
        DINOCrossEntropy.backward(dL: 1, student: sCls, teacherProbs: qCls, tauS: tauS, ds: &dsCls)
        DINOCrossEntropy.backward(dL: 1, student: sPatch, teacherProbs: qPatch, tauS: tauS, ds: &dsPatch)
        var dEnc = head.backward(dOut: joinClsPatch(dsCls, dsPatch), P, grads: grads)
        var dD = Tensor<T>.zeros(like: D)
        EDMLoss.backward(dL: 1, D: D, x0: I.x0, sigma: I.sigmaS, sigmaData: sd, dD: &dD)
        var dF = dD
        for n in 0..<N { for i in 0..<per { dF.data[n * per + i] *= coef[n].cOut } }
        var dOut = Tensor<T>.zeros(like: dec.out)
        Unpatchify.backward(dy: dF, p: cfg.patchSize, dx: &dOut)
        var dsiluC = Tensor<T>.zeros(like: enc.cond.siluC)
        let (dTokens, dEncDec) = dec.backward(cfg, dOut: dOut, siluC: enc.cond.siluC, P, grads: grads, dsiluC: &dsiluC)
        dEnc += dEncDec
        enc.backward(cfg, dOut: dEnc, dTokens: dTokens, dsiluC: dsiluC, P, grads: grads)
        result.grads = grads.tensors
        return result
    }

    /// [N, 1+V, K] -> ([N, K], [N, V, K])
    static func splitClsPatch<T: RefScalar>(_ x: Tensor<T>) -> (Tensor<T>, Tensor<T>) {
        let N = x.shape[0], V = x.shape[1] - 1, K = x.lastDim
        var cls = [T](), patch = [T]()
        for n in 0..<N {
            let lo: Int = n * (1 + V) * K
            cls += x.data[lo..<(lo + K)]
            patch += x.data[(lo + K)..<(lo + (1 + V) * K)]
        }
        return (Tensor(shape: [N, K], data: cls), Tensor(shape: [N, V, K], data: patch))
    }

    static func joinClsPatch<T: RefScalar>(_ cls: Tensor<T>, _ patch: Tensor<T>) -> Tensor<T> {
        let N = cls.shape[0], K = cls.lastDim, V = patch.shape[1]
        var out = [T](); out.reserveCapacity(N * (1 + V) * K)
        for n in 0..<N {
            let c0: Int = n * K, p0: Int = n * V * K
            out += cls.data[c0..<(c0 + K)]
            out += patch.data[p0..<(p0 + V * K)]
        }
        return Tensor(shape: [N, 1 + V, K], data: out)
    }
}

/// The denoiser D(x; sigma, y) = c_skip x + c_out F(c_in x; c_noise, y), every token
/// visible unless `keep` says otherwise (SPEC §2.10, §3). A label equal to num_classes takes
/// the null row of the label table (classifier-free guidance).
public enum Denoiser {
    public static func evaluate<T: RefScalar>(_ cfg: ModelConfig, _ P: Parameters<T>, x: Tensor<T>, sigma: [T],
                                              labels: [Int], keep: [[Int]]? = nil) -> Tensor<T> {
        var none: Activations<T>? = nil
        let keep = keep ?? Array(repeating: Array(0..<cfg.tokens), count: x.shape[0])
        return preconditioned(cfg, P, x: x, sigma: sigma, labels: labels, keep: keep, acts: &none).D
    }

    /// EDM's preconditioning (SPEC §3, EDM's `EDMPrecond`), the reference's one place for it:
    /// x_in = c_in x, F = the network's output on x_in at c_noise, D = c_skip x + c_out F.
    /// Also returns what the backward needs.
    static func preconditioned<T: RefScalar>(_ cfg: ModelConfig, _ P: Parameters<T>, x: Tensor<T>, sigma: [T], labels: [Int],
                                             keep: [[Int]], acts: inout Activations<T>?)
        -> (D: Tensor<T>, F: Tensor<T>, coef: [EDMCoefficients<T>], enc: Encoder<T>, dec: Decoder<T>) {
        let N = x.shape[0], per = x.count / N
        let coef = sigma.map { EDMCoefficients(sigma: $0, sigmaData: T(cfg.sigmaData)) }
        var xIn = x
        for n in 0..<N { for i in 0..<per { xIn.data[n * per + i] *= coef[n].cIn } }
        let enc = Encoder(cfg, xIn: xIn, cNoise: coef.map(\.cNoise), labels: labels, keep: keep, P, acts: &acts, prefix: ActivationName.student)
        let dec = Decoder(cfg, tokens: enc.tokens, enc: enc.out, siluC: enc.cond.siluC, keep: keep, P, acts: &acts)
        let F = Unpatchify.forward(dec.out, channels: cfg.inChannels, p: cfg.patchSize)
        var D = F
        for n in 0..<N { for i in 0..<per { D.data[n * per + i] = coef[n].denoised(x: x.data[n * per + i], F: F.data[n * per + i]) } }
        return (D, F, coef, enc, dec)
    }
}
