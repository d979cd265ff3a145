// Activation names of SPEC §7, built only here, in forward order: the order `diff`
// prints and the names every report uses.
public enum ActivationName {
    public static let tokens = "student.tokens"
    public static let c = "student.c"
    public static func encBlock(_ i: Int) -> String { encBlock(student, i) }
    public static let decIn = "student.dec.in"
    public static func decBlock(_ i: Int) -> String { "student.dec.block.\(i)" }
    public static let F = "student.F"
    public static let D = "student.D"
    public static let headCls = "student.head.cls"
    public static let headPatch = "student.head.patch"
    public static func teacherEncBlock(_ i: Int) -> String { encBlock(teacher, i) }
    public static let teacherHeadCls = "teacher.head.cls"
    public static let teacherHeadPatch = "teacher.head.patch"

    // The fast path's names beyond SPEC's (its monitor's checks: anomaly and headroom
    // reports), built only here. A branch is "student", "teacher" or "dit" (the plain DiT of
    // `oracle bench`).

    /// The student, teacher and plain-DiT branches.
    public static let student = "student", teacher = "teacher", dit = "dit"
    /// The gradient of activation `name` in the backward pass.
    public static func gradient(_ name: String) -> String { "d " + name }
    /// A branch's patch tokens, embed(x_in) + pos_embed [N, T, D].
    public static func tokens(_ branch: String) -> String { branch + ".tokens" }
    /// A branch's conditioning c [N, D].
    public static func c(_ branch: String) -> String { branch + ".c" }
    /// A branch's t_embedder hidden layer, mlp.0(freq(c_noise)) [N, D].
    public static func t1(_ branch: String) -> String { branch + ".t1" }
    /// The gradient of parameter `key` (a non-finite gradient's report).
    public static func parameterGradient(_ key: String) -> String { "grad." + key }
    /// The headroom statistics of parameter `key`'s gradient times the loss scale.
    public static func gradientHeadroom(_ key: String) -> String { "grad " + key }
    /// Loss `name` (LossName) in a non-finite loss's report.
    public static func loss(_ name: String) -> String { "loss." + name }
    /// A branch's encoder block i ("student.enc.block.i" is SPEC's `encBlock(i)`).
    public static func encBlock(_ branch: String, _ i: Int) -> String { "\(branch).enc.block.\(i)" }
    /// Block i of the plain DiT.
    public static func ditBlock(_ i: Int) -> String { "dit.block.\(i)" }
    /// decoder_layer's output, Linear(modulate(LN(H))) + decoder_pos_embed [N, T, Dd].
    public static let decLayer = "student.dec.layer"
    /// A branch's final_layer Linear output [N, T, p p C] (tokens of F before unpatchify).
    public static func final(_ branch: String) -> String { branch + ".final" }
    /// A branch's final_layer modulate(LN(z)) [N, T, W].
    public static func finalNorm(_ branch: String) -> String { branch + ".final.norm" }
    /// The student head's output rows, CLS and patch, whose gradient starts the backward pass.
    public static let headOutRows = "student.head.out (cls and patch rows)"

    /// An adaLN-Zero block's intermediates (SPEC §2.6) under the block's name.
    public enum Block {
        /// adaLN_modulation Linear(SiLU(c)) [N, 6W].
        public static func adaLN(_ block: String) -> String { block + ".adaLN" }
        /// modulate(LN(x), shift1, scale1).
        public static func norm1(_ block: String) -> String { block + ".norm1" }
        /// attn.qkv Linear [N, L, 3W].
        public static func qkv(_ block: String) -> String { block + ".attn.qkv" }
        /// q k^T / sqrt(d) [N, heads, L, L].
        public static func logits(_ block: String) -> String { block + ".attn.logits" }
        /// softmax of the logits.
        public static func probs(_ block: String) -> String { block + ".attn.probs" }
        /// P v, heads concatenated [N, L, W].
        public static func attnOut(_ block: String) -> String { block + ".attn.out" }
        /// attn.proj Linear.
        public static func proj(_ block: String) -> String { block + ".attn.proj" }
        /// x1 = x + gate1 attn.
        public static func x1(_ block: String) -> String { block + ".x1" }
        /// modulate(LN(x1), shift2, scale2).
        public static func norm2(_ block: String) -> String { block + ".norm2" }
        /// mlp.fc1 Linear [N, L, 4W].
        public static func fc1(_ block: String) -> String { block + ".mlp.fc1" }
        /// GELU(tanh) of fc1.
        public static func gelu(_ block: String) -> String { block + ".mlp.gelu" }
        /// mlp.fc2 Linear [N, L, W].
        public static func fc2(_ block: String) -> String { block + ".mlp.fc2" }
    }

    /// The DINO head's intermediates (SPEC §4) of a branch.
    public enum Head {
        /// head.mlp.i Linear (i = 0, 2, 4).
        public static func mlp(_ branch: String, _ i: Int) -> String { "\(branch).head.mlp.\(i)" }
        /// F.normalize of head.mlp.4.
        public static func normalized(_ branch: String) -> String { branch + ".head.normalized" }
        /// The weight-normalized last layer's output [rows, K].
        public static func out(_ branch: String) -> String { branch + ".head.out" }
    }

    /// Every activation of one training step, in forward order.
    public static func all(_ cfg: ModelConfig) -> [String] {
        [tokens, c] + (0..<cfg.depth).map(encBlock) + [decIn] + (0..<cfg.decoderDepth).map(decBlock)
            + [F, D, headCls, headPatch] + (0..<cfg.depth).map(teacherEncBlock)
            + [teacherHeadCls, teacherHeadPatch]
    }
}

/// Loss names of SPEC §7 (/losses), in the order they are computed.
public enum LossName {
    public static let generative = "generative"
    public static let disCls = "dis_cls"
    public static let disPatch = "dis_patch"
    public static let total = "total"
    public static let all = [generative, disCls, disPatch, total]
}
