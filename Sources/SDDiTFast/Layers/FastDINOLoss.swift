import Glibc
import SDDiTCore

// The discriminative losses (SPEC §4; the reference's DINOCrossEntropy) over the heads' rows:
// N (1 + V) rows of K, per sample the CLS row then its V patch rows. For row r with center C
// (the CLS or the patch center):
//   q = softmax((t_r - C) / tau_T),  p = softmax(s_r / tau_S),  h_r = -sum_j q_j log p_j
//   L_D^cls = mean of h over the CLS rows, L_D^patch = mean over the patch rows
// (float32 softmax / log-softmax, Double sums). Backward, with gradient scale s (the loss scale
// times the discriminative weight): ds_r = s (p - q) / (tau_S rows), rows = N or N V.
// Centering: this step's batch means of the teacher's CLS and patch rows, which the update
// blends in (SPEC §5): C <- m C + (1 - m) mean.
enum FastDINOLoss {
    struct Result {
        var cls: Double, patch: Double
        /// Batch means of the teacher's CLS and patch rows (for `FastCenters.update`).
        var batchCenters: (cls: [Float], patch: [Float])
    }

    /// The losses from the teacher's rows `t` and the student's `s` ([N (1 + V), K]), and
    /// their gradient with respect to `s` into `dOut`.
    static func forwardBackward(t: FT, s: FT, N: Int, V: Int, centers: FastCenters, tauT: Float, tauS: Float,
                                gradScale: Float, dOut: FT) -> Result {
        let K = t.last, R = N * (1 + V)
        let h = rows(t: t.p, s: s.p, N: N, V: V, K: K, centers: centers, tauT: tauT, tauS: tauS, gradScale: gradScale, dOut: dOut.p)
        var Lcls = 0.0, Lpatch = 0.0
        for r in 0..<R {
            if r % (1 + V) == 0 { Lcls += h[r] / Double(N) } else { Lpatch += h[r] / Double(N * V) }
        }
        return Result(cls: Lcls, patch: Lpatch, batchCenters: batchMeans(t, N: N, V: V))
    }

    /// The batch means of the teacher's CLS rows and of its patch rows (Double sums in row order).
    static func batchMeans(_ t: FT, N: Int, V: Int) -> (cls: [Float], patch: [Float]) {
        let K = t.last
        var newCls = [Double](repeating: 0, count: K), newPatch = [Double](repeating: 0, count: K)
        for r in 0..<(N * (1 + V)) {
            let tr = t.p + r * K
            if r % (1 + V) == 0 { for j in 0..<K { newCls[j] += Double(tr[j]) } } else { for j in 0..<K { newPatch[j] += Double(tr[j]) } }
        }
        return (newCls.map { Float($0 / Double(N)) }, newPatch.map { Float($0 / Double(N * V)) })
    }

    /// h_r for every row, and dOut_r = gradScale (p - q) / (tau_S rows). Rows are independent:
    /// any split over threads gives the same numbers.
    static func rows(t: UnsafePointer<Float>, s: UnsafePointer<Float>, N: Int, V: Int, K: Int, centers: FastCenters,
                     tauT tT: Float, tauS: Float, gradScale scaleD: Float, dOut: UnsafeMutablePointer<Float>) -> [Double] {
        let R = N * (1 + V)
        var hD = [Double](repeating: 0, count: R)
        let cc = centers.cls, cp = centers.patch
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

    /// The heads' rows [N (1 + V), K] split into the CLS rows [N, K] and the patch rows
    /// [N, V, K] (SPEC §7's head.cls / head.patch).
    static func split(_ h: FT, N: Int, V: Int) -> (cls: [Float], patch: [Float]) {
        let K = h.last
        var c = [Float](), p = [Float]()
        for n in 0..<N {
            c += UnsafeBufferPointer(start: h.p + n * (1 + V) * K, count: K)
            p += UnsafeBufferPointer(start: h.p + (n * (1 + V) + 1) * K, count: V * K)
        }
        return (c, p)
    }
}

/// The DINO centers of the CLS and the patch rows (SPEC §5): C <- m C + (1 - m) batch mean,
/// m the center momentum, after the step whose teacher rows gave the batch means.
struct FastCenters {
    var cls: [Float], patch: [Float]
    /// This step's batch means, set by the loss and blended in by `update`.
    var pending: (cls: [Float], patch: [Float]) = ([], [])

    mutating func update(momentum: Double) {
        let m = Float(momentum)
        for j in 0..<cls.count {
            cls[j] = m * cls[j] + (1 - m) * pending.cls[j]
            patch[j] = m * patch[j] + (1 - m) * pending.patch[j]
        }
    }
}
