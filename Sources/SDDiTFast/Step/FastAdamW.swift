import CFastKernels
import Glibc
import SDDiTCore

// PyTorch's AdamW in float32 (SPEC §5; the reference's AdamW), on student tensor p with
// gradient g at step t:
//   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
//   p <- p - lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// rounded to the half type in pure modes. The moments are float32 buffers in the model's
// workspace, one pair per trainable tensor.
final class FastAdamW {
    let lr: Float, b1: Float, b2: Float, eps: Float, wd: Float
    /// 1 - beta1 and 1 - beta2 computed in Double, then rounded (as torch passes them as the
    /// moments' alpha): used only without bias correction, where they do not cancel.
    let oneMinusB1: Float, oneMinusB2: Float
    private(set) var m: TensorTable = [:], v: TensorTable = [:]
    var step = 0

    init(_ cfg: ModelConfig) {
        lr = Float(cfg.lr); b1 = Float(cfg.adamBeta1); b2 = Float(cfg.adamBeta2); eps = Float(cfg.adamEps); wd = Float(cfg.weightDecay)
        oneMinusB1 = Float(1 - cfg.adamBeta1); oneMinusB2 = Float(1 - cfg.adamBeta2)
    }

    /// Zero moments for the trainable tensor `key` of `shape`.
    func addMoments(_ key: String, _ shape: [Int], _ ws: Workspace) {
        m[key] = ws.get("adam.m." + key, shape, zero: true)
        v[key] = ws.get("adam.v." + key, shape, zero: true)
    }

    /// One step over every tensor with a gradient.
    func update(_ ctx: FastContext, params: TensorTable, grads: TensorTable) {
        step += 1
        for (key, g) in grads where ctx.variant.trains(key) { apply(ctx, params.tensor(key), g, step: step, moments: (m.tensor(key), v.tensor(key))) }
    }

    /// The update of one tensor at step t, with the given moments (updated in place), or
    /// (nil: the streamed step's first step) from zero moments not kept: the same arithmetic.
    func apply(_ ctx: FastContext, _ param: FT, _ grad: FT, step t: Int, moments: (m: FT, v: FT)?) {
        let lr = lr, b1 = b1, b2 = b2, eps = eps, wd = wd
        let unbiased = !ctx.variant.adamNoBiasCorrection   // a divergence: no bias correction
        let a1 = unbiased ? 1 - b1 : oneMinusB1, a2 = unbiased ? 1 - b2 : oneMinusB2
        let bc1 = unbiased ? 1 - powf(b1, Float(t)) : 1, bc2 = unbiased ? (1 - powf(b2, Float(t))).squareRoot() : 1
        // p *= 1 - lr wd; m = b1 m + a1 g; v = b2 v + a2 g g; p -= (lr / bc1) m / (sqrt(v) / bc2 + eps)
        // (CFastKernels; the definition in Swift: `FastLoops.adamW`)
        let h: [Float] = [1 - lr * wd, b1, a1, b2, a2, lr / bc1, bc2, eps]
        let p = param.p, gp = grad.p, m = moments?.m.p, v = moments?.v.p
        h.withUnsafeBufferPointer { hp in
            let hb = hp.baseAddress!
            parallelRanges(grad.count) { lo, hi in sddit_fast_adamw(p, gp, m, v, hb, lo, hi) }
        }
        if ctx.prec.isPure { ctx.prec.round(p, grad.count) }
    }

    /// The moments as arrays, for checkpoints.
    func state() -> (m: [String: [Float]], v: [String: [Float]], step: Int) {
        (m.mapValues { $0.array() }, v.mapValues { $0.array() }, step)
    }

    /// Restores the moments and step count; every key must be present with its size.
    func restore(m mIn: [String: [Float]], v vIn: [String: [Float]], step s: Int) throws {
        for (key, b) in m {
            guard let mv = mIn[key], let vv = vIn[key], mv.count == b.count, vv.count == b.count else {
                throw ConfigError("optimizer state: moments of '\(key)' are missing or have the wrong size (expected \(b.count) values)")
            }
            b.copy(from: mv); v.tensor(key).copy(from: vv)
        }
        step = s
    }
}
