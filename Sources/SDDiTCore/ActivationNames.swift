// Activation names of SPEC §7, built only here, in forward order: the order `diff`
// prints and the names every report uses.
public enum ActivationName {
    public static let tokens = "student.tokens"
    public static let c = "student.c"
    public static func encBlock(_ i: Int) -> String { "student.enc.block.\(i)" }
    public static let decIn = "student.dec.in"
    public static func decBlock(_ i: Int) -> String { "student.dec.block.\(i)" }
    public static let F = "student.F"
    public static let D = "student.D"
    public static let headCls = "student.head.cls"
    public static let headPatch = "student.head.patch"
    public static func teacherEncBlock(_ i: Int) -> String { "teacher.enc.block.\(i)" }
    public static let teacherHeadCls = "teacher.head.cls"
    public static let teacherHeadPatch = "teacher.head.patch"

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
