import RealModule

// The DINO projection head's special layers (SPEC §4).

/// F.normalize(x, dim=-1, eps=1e-12): y = x / max(||x||, eps), row-wise.
public enum L2Normalize {
    public static func forward<T: RefScalar>(_ x: Tensor<T>, eps: T = T(1e-12)) -> (y: Tensor<T>, norms: [T]) {
        let W = x.lastDim, R = x.rows
        var y = x, norms = [T](repeating: 0, count: R)
        for r in 0..<R {
            var s: T = 0
            for i in 0..<W { s += x.data[r * W + i] * x.data[r * W + i] }
            let nrm = s.squareRoot(), d = max(nrm, eps)
            for i in 0..<W { y.data[r * W + i] = x.data[r * W + i] / d }
            norms[r] = nrm
        }
        return (y, norms)
    }
    /// ||x|| > eps: dx += (dy - y (y . dy)) / ||x||;  otherwise dx += dy / eps
    public static func backward<T: RefScalar>(dy: Tensor<T>, y: Tensor<T>, norms: [T], eps: T = T(1e-12), dx: inout Tensor<T>) {
        let W = y.lastDim, R = y.rows
        for r in 0..<R {
            if norms[r] > eps {
                var dot: T = 0
                for i in 0..<W { dot += y.data[r * W + i] * dy.data[r * W + i] }
                for i in 0..<W { dx.data[r * W + i] += (dy.data[r * W + i] - y.data[r * W + i] * dot) / norms[r] }
            } else {
                for i in 0..<W { dx.data[r * W + i] += dy.data[r * W + i] / eps }
            }
        }
    }
}

/// Weight-normalized last layer (no bias): weight[k] = g[k] v[k] / ||v[k]||; y = x weight^T.
/// v [K, B], g [K, 1]; x [..., B] -> y [..., K].
public enum WeightNormLinear {
    public static func weight<T: RefScalar>(v: Tensor<T>, g: Tensor<T>) -> Tensor<T> {
        let K = v.shape[0], B = v.lastDim
        var w = v
        for k in 0..<K {
            var s: T = 0
            for i in 0..<B { s += v.data[k * B + i] * v.data[k * B + i] }
            let f = g.data[k] / s.squareRoot()
            for i in 0..<B { w.data[k * B + i] = v.data[k * B + i] * f }
        }
        return w
    }
    public static func forward<T: RefScalar>(_ x: Tensor<T>, v: Tensor<T>, g: Tensor<T>) -> Tensor<T> {
        Linear.forward(x, weight: weight(v: v, g: g), bias: nil)
    }
    /// dx += dy weight;  dv[k] += g/||v|| (dW[k] - vhat (vhat . dW[k])), dW = dy^T x.
    /// dg is not formed: g is fixed (DINO's norm_last_layer).
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, v: Tensor<T>, g: Tensor<T>,
                                              dx: inout Tensor<T>, dv: inout Tensor<T>) {
        let w = weight(v: v, g: g)
        Linear.backwardInput(dy: dy, weight: w, dx: &dx)
        var dw = Tensor<T>.zeros(like: v)
        var none: Tensor<T>? = nil
        Linear.backwardParams(dy: dy, x: x, dw: &dw, db: &none)
        let K = v.shape[0], B = v.lastDim
        for k in 0..<K {
            var s: T = 0
            for i in 0..<B { s += v.data[k * B + i] * v.data[k * B + i] }
            let nrm = s.squareRoot()
            var dot: T = 0
            for i in 0..<B { dot += v.data[k * B + i] / nrm * dw.data[k * B + i] }
            for i in 0..<B {
                dv.data[k * B + i] += g.data[k] / nrm * (dw.data[k * B + i] - v.data[k * B + i] / nrm * dot)
            }
        }
    }
}

/// DINO cross-entropy (SPEC §4), row-wise over K, averaged over the R rows:
/// H = -(1/R) sum_r sum_k softmax((t - C)/tau_T)_k log_softmax(s/tau_S)_k; teacher side constant.
public enum DINOCrossEntropy {
    public static func teacherProbs<T: RefScalar>(_ t: Tensor<T>, center: Tensor<T>, tauT: T) -> Tensor<T> {
        softmax(t, shift: center, temperature: tauT)
    }
    static func softmax<T: RefScalar>(_ x: Tensor<T>, shift: Tensor<T>?, temperature: T) -> Tensor<T> {
        let K = x.lastDim, R = x.rows
        var y = x
        for r in 0..<R {
            var mx = -T.infinity
            for k in 0..<K {
                let z = (x.data[r * K + k] - (shift?.data[k] ?? 0)) / temperature
                y.data[r * K + k] = z; mx = max(mx, z)
            }
            var s: T = 0
            for k in 0..<K { let e = T.exp(y.data[r * K + k] - mx); y.data[r * K + k] = e; s += e }
            for k in 0..<K { y.data[r * K + k] /= s }
        }
        return y
    }

    public static func forward<T: RefScalar>(student s: Tensor<T>, teacherProbs q: Tensor<T>, tauS: T) -> T {
        let K = s.lastDim, R = s.rows
        var total: T = 0
        for r in 0..<R {
            var mx = -T.infinity
            for k in 0..<K { mx = max(mx, s.data[r * K + k] / tauS) }
            var z: T = 0
            for k in 0..<K { z += T.exp(s.data[r * K + k] / tauS - mx) }
            let lse = mx + T.log(z)
            var h: T = 0
            for k in 0..<K { h -= q.data[r * K + k] * (s.data[r * K + k] / tauS - lse) }
            total += h
        }
        return total / T(R)
    }

    /// ds += dL (softmax(s/tau_S) - q) / (tau_S R)   (the rows of q sum to 1)
    public static func backward<T: RefScalar>(dL: T, student s: Tensor<T>, teacherProbs q: Tensor<T>, tauS: T,
                                              ds: inout Tensor<T>) {
        let p = softmax(s, shift: nil, temperature: tauS)
        let R = T(s.rows)
        for i in 0..<s.count { ds.data[i] += dL * (p.data[i] - q.data[i]) / (tauS * R) }
    }
}
