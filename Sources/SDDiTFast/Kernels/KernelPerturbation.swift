import Glibc

/// A verification hook for `oracle regress` (and for nothing else): it lets a test show that
/// `oracle regress check` catches a deliberately wrong kernel without rebuilding.
/// `SDDIT_ORACLE_PERTURB=<kernel>:<relative size>`, read once when the fast path first runs,
/// multiplies the forward output of that fast-path kernel by (1 + size):
///   gelu       GELU tanh of every DiT / decoder block's MLP (`Kernels.geluTanh`)
///   layernorm  fused LayerNorm + modulate (`Kernels.lnModulate`)
/// Unset (the normal case) it costs one branch per kernel call. Backward kernels and the
/// reference are untouched, so a perturbed run also breaks the fast path's gradients' agreement.
public enum KernelPerturbation {
    public static let setting: (kernel: String, size: Float)? = {
        guard let raw = getenv("SDDIT_ORACLE_PERTURB") else { return nil }
        let parts = String(cString: raw).split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, let size = Float(parts[1]), size.isFinite,
              ["gelu", "layernorm"].contains(parts[0]) else { return nil }
        return (parts[0], size)
    }()
    static let gelu: Float? = setting.flatMap { $0.kernel == "gelu" ? $0.size : nil }
    static let layernorm: Float? = setting.flatMap { $0.kernel == "layernorm" ? $0.size : nil }
    /// A malformed value is not ignored silently: callers (oracle regress) report it.
    public static var rawValue: String? { getenv("SDDIT_ORACLE_PERTURB").map { String(cString: $0) } }
    /// One line on stderr, once per process, when a fast model is built with the hook set: a
    /// perturbed `oracle diff`, `bench` or `train` must not pass for a normal one.
    static let warnOnce: Void = {
        guard let raw = rawValue else { return }
        let what = setting.map { "fast-path kernel \($0.kernel) multiplied by 1 + \($0.size)" } ?? "malformed, no kernel perturbed"
        let line = "warning: SDDIT_ORACLE_PERTURB=\(raw) is set (\(what)); a verification hook, not a normal run\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }()
}

/// The fast path's element-wise float32 functions, for tests and tools (the loops call the
