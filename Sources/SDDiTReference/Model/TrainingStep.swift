import RealModule

// One training step (SPEC §5): AdamW on the student, EMA teacher, center update.

/// PyTorch's AdamW (decoupled weight decay, bias-corrected moments).
public struct AdamW<T: RefScalar>: Sendable {
    public var lr: T, beta1: T, beta2: T, eps: T, weightDecay: T
    public var m: [String: Tensor<T>] = [:], v: [String: Tensor<T>] = [:]
    public var step = 0

    public init(_ cfg: ModelConfig) {
        lr = T(cfg.lr); beta1 = T(cfg.adamBeta1); beta2 = T(cfg.adamBeta2)
        eps = T(cfg.adamEps); weightDecay = T(cfg.weightDecay)
    }

    /// p <- p (1 - lr wd); m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    /// p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    public mutating func update(_ P: inout Parameters<T>, grads: [String: Tensor<T>]) {
        step += 1
        for key in grads.keys.sorted() {
            let g = grads[key]!
            var p = P[key], mk = m[key] ?? .zeros(like: g), vk = v[key] ?? .zeros(like: g)
            apply(&p, grad: g, m: &mk, v: &vk)
            P[key] = p
            m[key] = mk; v[key] = vk
        }
    }

    /// The step above on one tensor, at the current `step` (already counted).
    public func apply(_ p: inout Tensor<T>, grad g: Tensor<T>, m mk: inout Tensor<T>, v vk: inout Tensor<T>) {
        let bc1 = 1 - T.pow(beta1, step), bc2 = 1 - T.pow(beta2, step)
        let lr = lr, beta1 = beta1, beta2 = beta2, eps = eps, weightDecay = weightDecay
        // element by element, in ranges over the cores (each element's arithmetic as written)
        p.data.withUnsafeMutableBufferPointer { pb in mk.data.withUnsafeMutableBufferPointer { mb in
            vk.data.withUnsafeMutableBufferPointer { vb in g.data.withUnsafeBufferPointer { gb in
                let io = UncheckedBox((pb.baseAddress!, mb.baseAddress!, vb.baseAddress!, gb.baseAddress!))
                Parallel.ranges(pb.count) { lo, hi in
                    let (p, m, v, g) = io.value
                    for i in lo..<hi {
                        p[i] *= 1 - lr * weightDecay
                        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
                        let denom = v[i].squareRoot() / bc2.squareRoot() + eps
                        p[i] -= lr / bc1 * m[i] / denom
                    }
                }
            } }
        } }
    }
}

public enum EMA {
    /// teacher <- beta teacher + (1 - beta) student, for every teacher key (encoder + head).
    public static func update<T: RefScalar>(teacher: inout Parameters<T>, student: Parameters<T>, beta: T) {
        for key in teacher.tensors.keys.sorted() {
            var t = teacher[key]
            blend(&t, student[key], beta: beta)
            teacher[key] = t
        }
    }

    /// t <- beta t + (1 - beta) s, one tensor.
    public static func blend<T: RefScalar>(_ t: inout Tensor<T>, _ s: Tensor<T>, beta: T) {
        t.data.withUnsafeMutableBufferPointer { tb in s.data.withUnsafeBufferPointer { sb in
            let io = UncheckedBox((tb.baseAddress!, sb.baseAddress!))
            Parallel.ranges(tb.count) { lo, hi in
                let (t, s) = io.value
                for i in lo..<hi { t[i] = beta * t[i] + (1 - beta) * s[i] }
            }
        } }
    }
}

/// Student, teacher, optimizer and centers: everything one step changes.
public struct TrainingState<T: RefScalar>: Sendable {
    public var student: Parameters<T>
    public var teacher: Parameters<T>
    public var optimizer: AdamW<T>
    public var centerCls: Tensor<T>
    public var centerPatch: Tensor<T>

    /// Teacher and centers start as a copy of the student and zeros (SPEC §5).
    public init(_ cfg: ModelConfig, student: Parameters<T>, teacher: Parameters<T>? = nil,
                centerCls: Tensor<T>? = nil, centerPatch: Tensor<T>? = nil) {
        self.student = student
        self.teacher = teacher ?? student.subset(cfg.teacherParameters)
        optimizer = AdamW(cfg)
        self.centerCls = centerCls ?? .zeros([cfg.headOutDim])
        self.centerPatch = centerPatch ?? .zeros([cfg.headOutDim])
    }

    /// Forward, backward, AdamW, EMA (beta = cfg.emaBeta), centers. The inputs' centers are
    /// replaced by this state's.
    public mutating func step(_ cfg: ModelConfig, inputs: StepInputs<T>) throws -> ObjectiveResult<T> {
        var I = inputs
        I.centerCls = centerCls; I.centerPatch = centerPatch
        let r = try Objective.run(cfg, student: student, teacher: teacher, inputs: I)
        optimizer.update(&student, grads: r.grads)
        EMA.update(teacher: &teacher, student: student, beta: T(cfg.emaBeta))
        centerCls = r.newCenterCls; centerPatch = r.newCenterPatch
        return r
    }
}
