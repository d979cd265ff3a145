import SDDiTCore
import SDDiTFast

// The catalogue `oracle diff --explain` tests (README "Naming the bug"): the known places
// where the code an SD-DiT is assembled from (DiT, MaskDiT, EDM, DINO / iBOT) and PyTorch's
// defaults differ from SPEC. Each is a deviation of the fast path's layers (`FastVariant`)
// or a config value the step used instead of the file's (fitted from the file, ExplainFits.swift).

/// One known way an implementation departs from SPEC.
public struct Divergence: Sendable {
    /// Its `oracle dump --plant` name, or KEY=VALUE for a config value.
    public var id: String
    /// The cause in plain words.
    public var cause: String
    /// Which upstream code or default does it that way.
    public var sources: String
    /// SPEC's section.
    public var spec: String
    /// The first dataset it can change (`DatasetOrder`); a group prefix ("after_step/params/")
    /// stands for that group's first dataset.
    public var actsFrom: String
    /// Where it can act, in words.
    public var scope: String
    public var variant = FastVariant()
    /// A config value the run used instead of the file's.
    public var config: (key: String, value: Double)? = nil

    /// The config a rerun of this divergence uses.
    public func apply(_ c: inout ModelConfig) {
        guard let (k, v) = config else { return }
        switch k {
        case "tau_t": c.tauT = v
        case "tau_s": c.tauS = v
        case "lr": c.lr = v
        case "weight_decay": c.weightDecay = v
        case "adam_eps": c.adamEps = v
        case "ema_beta": c.emaBeta = v
        case "center_momentum": c.centerMomentum = v
        default: preconditionFailure("Divergence: no config key \(k)")
        }
    }
}

public enum Divergences {
    /// The catalogue's entries for `cfg`: the block deviations in each encoder block and in
    /// every block, and the others once. Config values (lr, weight decay, eps, temperatures,
    /// EMA beta, center momentum) join from the fits.
    public static func catalogue(_ cfg: ModelConfig) -> [Divergence] {
        var out: [Divergence] = []
        typealias BD = FastVariant.BlockDeviation
        let blockKinds: [(BD, String, String, String)] = [
            (.exactGELU, "gelu-exact", "GELU exact (erf) for DiT's tanh approximation in the MLP of",
             "torch.nn.GELU()'s default approximate='none'; DiT's Mlp uses GELU(approximate=\"tanh\")"),
            (.layerNormEps, "ln-eps", "LayerNorm eps 1e-5 (PyTorch's default) for DiT's 1e-6 in",
             "torch.nn.LayerNorm's default eps=1e-5; DiT's blocks and final layer set eps=1e-6"),
            (.unscaledAttention, "no-sqrt-d", "attention logits without the 1/sqrt(head_dim) scale in",
             "a hand-written attention; timm's Attention and F.scaled_dot_product_attention scale by head_dim^-0.5"),
            (.shiftScaleSwap, "shift-scale", "modulate's shift and scale swapped (adaLN chunks read as scale, shift) in",
             "DiT's modulate(x, shift, scale) and chunk order shift, scale, gate; other adaLN code takes scale first"),
        ]
        for (kind, id, words, src) in blockKinds {
            for b in 0..<cfg.depth {
                var v = FastVariant()
                switch kind {
                case .exactGELU: v.exactGELUBlock = b
                case .layerNormEps: v.layerNormEpsBlock = b; v.layerNormEps = 1e-5
                case .unscaledAttention: v.unscaledAttentionBlock = b
                case .shiftScaleSwap: v.shiftScaleSwapBlock = b
                }
                out.append(Divergence(id: "\(id):\(b)", cause: "\(words) encoder block \(b)", sources: src, spec: "SPEC §2.6",
                                      actsFrom: "activations/" + ActivationName.encBlock(ActivationName.student, b),
                                      scope: "student and teacher blocks.\(b)", variant: v))
                if kind == .layerNormEps {   // one of the block's two norms
                    for n in 1...2 {
                        v.layerNormEpsNorm = n
                        out.append(Divergence(id: "\(id):\(b):norm\(n)", cause: "\(words) encoder block \(b)'s norm\(n) (before the \(n == 1 ? "attention" : "MLP")) alone",
                                              sources: src, spec: "SPEC §2.6", actsFrom: "activations/" + ActivationName.encBlock(ActivationName.student, b),
                                              scope: "student and teacher blocks.\(b).norm\(n)", variant: v))
                    }
                }
            }
            var v = FastVariant()
            v.everyBlock = [kind]
            if kind == .layerNormEps {   // every LayerNorm, and the DiT blocks' alone
                v.layerNormEps = 1e-5
                out.append(Divergence(id: "\(id):blocks", cause: "\(words) every DiT block (encoder and decoder; not the decoder and final layers)", sources: src,
                                      spec: "SPEC §2.6", actsFrom: "activations/" + ActivationName.encBlock(ActivationName.student, 0),
                                      scope: "blocks.*, decoder_blocks.*", variant: v))
                v.layerNormEpsLayers = true
            }
            let every = kind == .layerNormEps ? "every LayerNorm (DiT blocks, decoder layer, final layer)" : "every DiT block (encoder and decoder)"
            out.append(Divergence(id: "\(id):all", cause: "\(words) \(every)", sources: src, spec: "SPEC §2.6",
                                  actsFrom: "activations/" + ActivationName.encBlock(ActivationName.student, 0),
                                  scope: "blocks.*, decoder_blocks.*" + (kind == .layerNormEps ? ", decoder_layer, final_layer" : ""), variant: v))
        }
        func one(_ id: String, _ cause: String, _ sources: String, _ spec: String, _ acts: String, _ scope: String,
                 _ set: (inout FastVariant) -> Void) {
            var v = FastVariant()
            set(&v)
            out.append(Divergence(id: id, cause: cause, sources: sources, spec: spec, actsFrom: acts, scope: scope, variant: v))
        }
        let S = ActivationName.student
        one("c-noise-ln", "c_noise = ln(sigma) for EDM's ln(sigma)/4", "EDM's EDMPrecond and MaskDiT use sigma.log() / 4; VE / iDDPM-style code conditions on ln(sigma) or sigma itself",
            "SPEC §3", "activations/" + ActivationName.c(S), "t_embedder input, student and teacher") { $0.cNoiseLn = true }
        one("temb-sin-first", "timestep embedding ordered [sin, cos] for DiT's [cos, sin]", "diffusers' get_timestep_embedding (flip_sin_to_cos=False); DiT's TimestepEmbedder concatenates cos first",
            "SPEC §2.3", "activations/" + ActivationName.c(S), "t_embedder, student and teacher") { $0.timestepSinFirst = true }
        one("mask-token", "decoder input with a learned (zero-initialised) mask token at hidden positions for SD-DiT's embedded noised tokens",
            "MaskDiT's decoder (mask_token = zeros, concatenated and unshuffled); SD-DiT's H = gather(cat(e_S, v), M)",
            "SPEC §2.7", "activations/" + ActivationName.decIn, "student.dec.in at hidden positions") { $0.maskToken = true }
        one("unpatchify-cij", "unpatchify reading each token vector in (c, i, j) order for (i, j, c)",
            "the patch embedding's (c, i, j) weight layout taken for DiT's unpatchify (nhwpqc -> nchpwq)",
            "SPEC §2.9", "activations/" + ActivationName.F, "student.F") { $0.unpatchifyCIJ = true }
        one("teacher-clean", "the teacher fed clean x0 (no sigma_T n_T noise) at sigma_T",
            "DINO / iBOT teachers see clean views; SD-DiT's teacher view is x0 + sigma_min n_T",
            "SPEC §3", "activations/" + ActivationName.encBlock(ActivationName.teacher, 0), "teacher view") { $0.teacherClean = true }
        one("head-gelu-tanh", "the projection head's GELUs with the tanh approximation for DINO's exact GELU",
            "DiT's approximate GELU reused in the DINOHead; DINO's head uses nn.GELU() (exact)",
            "SPEC §4", "activations/" + ActivationName.headCls, "head.mlp, student and teacher") { $0.headGELUTanh = true }
        one("edm-no-weight", "the generative loss without EDM's weight lambda(sigma) (a plain MSE of D - x0)",
            "DiT / MaskDiT-style unweighted MSE; EDM's EDMLoss weights by (sigma^2 + sigma_data^2) / (sigma sigma_data)^2",
            "SPEC §4", "losses/generative", "L_G") { $0.edmUnweighted = true }
        one("tau-swap", "the DINO temperatures swapped (tau_S for the teacher, tau_T for the student)",
            "DINO's DINOLoss(student_temp, teacher_temp) arguments in the other order",
            "SPEC §4", "losses/dis_cls", "L_D^cls, L_D^patch") { $0.swapTemperatures = true }
        one("no-centering", "the teacher's softmax without centering", "DINO's DINOLoss subtracts self.center before the teacher softmax; a plain cross-entropy does not",
            "SPEC §4", "losses/dis_cls", "L_D^cls, L_D^patch") { $0.noCentering = true }
        one("center-before-loss", "the centers updated before the loss (the loss uses this step's updated centers)",
            "DINO updates the center after computing the loss (update_center at the end of forward)",
            "SPEC §5", "losses/dis_cls", "L_D^cls, L_D^patch") { $0.centersBeforeLoss = true }
        one("no-bias-correction", "Adam's moments without bias correction (an update of (1 - beta1) / sqrt(1 - beta2) lr at the first step)",
            "a hand-written Adam; torch.optim.AdamW divides by 1 - beta^t", "SPEC §5", "after_step/params/", "every trained tensor") { $0.adamNoBiasCorrection = true }
        one("ema-before-step", "the EMA teacher updated from the student before the optimizer step",
            "the EMA update called before optimizer.step(); DiT calls update_ema after opt.step()", "SPEC §5", "after_step/teacher/", "every teacher tensor") { $0.emaBeforeStep = true }
        one("ema-reversed", "the EMA reversed: teacher <- (1 - beta) teacher + beta student",
            "DiT's update_ema and DINO's momentum update: ema.mul_(decay).add_(param, alpha=1 - decay)", "SPEC §5", "after_step/teacher/", "every teacher tensor") { $0.emaReversed = true }
        one("weight-g-trained", "head.last_layer.weight_g trained where SPEC fixes g at 1",
            "DINO's DINOHead with norm_last_layer=False (weight_g requires grad)", "SPEC §4", "after_step/params/", "head.last_layer.weight_g") { $0.weightGTrained = true }
        return out
    }

    /// The config values a step can be run with: (key, what it is, its config value, where
    /// upstream code or a default differs, SPEC's section, the first dataset, where it acts).
    static let configValues: [(key: String, what: String, value: @Sendable (ModelConfig) -> Double, sources: String, spec: String, acts: String, scope: String)] = [
        ("tau_t", "DINO teacher temperature tau_T", { $0.tauT }, "DINO's teacher_temp 0.04 (warm-up to 0.07), or the tau_T schedule read at another step",
         "SPEC §4-5", "losses/dis_cls", "L_D^cls, L_D^patch"),
        ("tau_s", "DINO student temperature tau_S", { $0.tauS }, "DINO's student_temp 0.1", "SPEC §4", "losses/dis_cls", "L_D^cls, L_D^patch"),
        ("lr", "AdamW lr", { $0.lr }, "torch.optim.AdamW's default lr 1e-3, or a schedule (warm-up, batch scaling) the config does not record",
         "SPEC §5", "after_step/params/", "every trained tensor"),
        ("weight_decay", "AdamW weight decay", { $0.weightDecay }, "torch.optim.AdamW's default weight_decay=0.01; SD-DiT and DiT train with 0",
         "SPEC §5", "after_step/params/", "every trained tensor"),
        ("adam_eps", "AdamW eps", { $0.adamEps }, "torch's default eps 1e-8; other recipes use 1e-6 or 1e-15", "SPEC §5", "after_step/params/", "every trained tensor"),
        ("ema_beta", "EMA beta", { $0.emaBeta }, "DiT's update_ema decay 0.9999; DINO's momentum_teacher 0.996 -> 1 (cosine), read at another step",
         "SPEC §5", "after_step/teacher/", "every teacher tensor"),
        ("center_momentum", "center momentum", { $0.centerMomentum }, "DINO's and iBOT's center_momentum 0.9", "SPEC §5", "after_step/center_cls",
         "after_step/center_cls, center_patch"),
    ]

    /// A config value the step used instead of the file's, as a divergence.
    public static func configValue(_ key: String, _ value: Double, _ cfg: ModelConfig) -> Divergence {
        guard let c = configValues.first(where: { $0.key == key }) else { preconditionFailure("Divergences: no config key \(key)") }
        let v = String(format: "%g", value)
        return Divergence(id: "\(key)=\(v)", cause: String(format: "%@ %@ (config: %g)", c.what, v, c.value(cfg)),
                          sources: c.sources, spec: c.spec, actsFrom: c.acts, scope: c.scope, config: (key, value))
    }

    /// A mask token with the given values (fitted from the file's decoder input).
    public static func maskToken(_ values: [Float]) -> Divergence {
        var v = FastVariant()
        v.maskToken = true; v.maskTokenValues = values
        return Divergence(id: "mask-token=fitted", cause: String(format: "decoder input with a learned mask token (max |value| %.3g, read from the file) at hidden positions for SD-DiT's embedded noised tokens", Double(values.map(abs).max() ?? 0)),
                          sources: "MaskDiT's / MAE's decoder (a learned mask_token, concatenated and unshuffled); SD-DiT's H = gather(cat(e_S, v), M)",
                          spec: "SPEC §2.7", actsFrom: "activations/" + ActivationName.decIn, scope: "student.dec.in at hidden positions", variant: v)
    }

    /// Parameters left out of the optimizer: the keys under `prefix` not updated.
    public static func frozen(_ prefix: String) -> Divergence {
        var v = FastVariant()
        v.frozenPrefix = prefix
        return Divergence(id: "frozen:\(prefix)", cause: "\(prefix)* not updated (left out of the optimizer, or requires_grad False)",
                          sources: "a parameter group missing from the optimizer, or frozen by mistake", spec: "SPEC §5",
                          actsFrom: "after_step/params/", scope: prefix + "*", variant: v)
    }
}
