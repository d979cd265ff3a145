// Linear (SPEC §2: every nn.Linear, and the patch embedding as a linear map of patches).
// x [..., I] -> y [..., O]; weight [O, I] (PyTorch layout), bias [O].
// Each product has its plain loop (the definition, used for Float80) and, for Double, the same
// sums through `Product` (Kernels/Product.swift): bit-identical, tested against the loops.
public enum Linear {
    /// y[r, o] = b[o] + sum_i x[r, i] W[o, i]
    public static func forward<T: RefScalar>(_ x: Tensor<T>, weight w: Tensor<T>, bias b: Tensor<T>?) -> Tensor<T> {
        if T.self == Double.self {   // (same layout: the casts copy nothing)
            return unsafeBitCast(forwardKernel(asDouble(x), weight: asDouble(w), bias: b.map(asDouble)), to: Tensor<T>.self)
        }
        return forwardPlain(x, weight: w, bias: b)
    }

    /// dx[r, i] += sum_o dy[r, o] W[o, i]
    public static func backwardInput<T: RefScalar>(dy: Tensor<T>, weight w: Tensor<T>, dx: inout Tensor<T>) {
        guard T.self == Double.self else { return backwardInputPlain(dy: dy, weight: w, dx: &dx) }
        let O = dy.lastDim, R = dy.rows, I = w.count / O
        withDoubleStorage(&dx) { dx in
            product(asDouble(dy), asDouble(w), into: &dx) { a, b, c in
                Product.run(M: R, N: I, K: O, A: StridedMatrix(a, rowStride: O, colStride: 1),
                            B: StridedMatrix(b, rowStride: I, colStride: 1), start: nil, C: c, ldc: I, store: .add)
            }
        }
    }

    /// dW[o, i] += sum_r dy[r, o] x[r, i];  db[o] += sum_r dy[r, o]
    public static func backwardParams<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dw: inout Tensor<T>, db: inout Tensor<T>?) {
        guard T.self == Double.self else { return backwardParamsPlain(dy: dy, x: x, dw: &dw, db: &db) }
        let O = dy.lastDim, R = dy.rows, I = x.lastDim
        withDoubleStorage(&dw) { dw in
            product(asDouble(dy), asDouble(x), into: &dw) { a, b, c in
                Product.run(M: O, N: I, K: R, A: StridedMatrix(a, rowStride: 1, colStride: O),
                            B: StridedMatrix(b, rowStride: I, colStride: 1), start: nil, C: c, ldc: I, store: .add)
            }
        }
        if db != nil { biasGradient(dy: dy, db: &db!) }
    }

    static func forwardKernel(_ x: Tensor<Double>, weight w: Tensor<Double>, bias b: Tensor<Double>?) -> Tensor<Double> {
        let I = x.lastDim, R = x.rows, O = w.count / I
        precondition(w.count == O * I, "Linear: weight \(w.shape) does not take input \(x.shape)")
        var y = Tensor<Double>(shape: Array(x.shape.dropLast()) + [O], repeating: 0)
        let bias = b?.data ?? []
        bias.withUnsafeBufferPointer { bp in
            product(x, w, into: &y) { a, wp, c in
                Product.run(M: R, N: O, K: I, A: StridedMatrix(a, rowStride: I, colStride: 1),
                            B: StridedMatrix(wp, rowStride: 1, colStride: I), start: b == nil ? nil : bp.baseAddress!,
                            C: c, ldc: O, store: .set)
            }
        }
        return y
    }

    /// body(A, B, C) with the storage of `a`, `b` and `c`.
    static func product(_ a: Tensor<Double>, _ b: Tensor<Double>, into c: inout Tensor<Double>,
                        _ body: (UnsafePointer<Double>, UnsafePointer<Double>, UnsafeMutablePointer<Double>) -> Void) {
        a.data.withUnsafeBufferPointer { a in b.data.withUnsafeBufferPointer { b in c.data.withUnsafeMutableBufferPointer { c in
            body(a.baseAddress!, b.baseAddress!, c.baseAddress!)
        } } }
    }

    /// db[o] += sum_r dy[r, o]
    static func biasGradient<T: RefScalar>(dy: Tensor<T>, db: inout Tensor<T>) {
        let O = dy.lastDim, R = dy.rows
        // s[o] = 0 + dy[0, o] + dy[1, o] + ... (r ascending, as the plain loop): every column at
        // once, row by row, in ranges of columns over the cores
        var s = [T](repeating: 0, count: O)
        dy.data.withUnsafeBufferPointer { g in s.withUnsafeMutableBufferPointer { sp in
            let io = UncheckedBox((g.baseAddress!, sp.baseAddress!))
            Parallel.ranges(O, minimum: max(8, (1 << 14) / max(R, 1))) { lo, hi in
                let (g, s) = io.value
                for r in 0..<R { for o in lo..<hi { s[o] += g[r * O + o] } }
            }
        } }
        for o in 0..<O { db.data[o] += s[o] }
    }

    // MARK: the plain loops: the definition

    /// y[r, o] = b[o] + sum_i x[r, i] W[o, i]
    public static func forwardPlain<T: RefScalar>(_ x: Tensor<T>, weight w: Tensor<T>, bias b: Tensor<T>?) -> Tensor<T> {
        let I = x.lastDim, R = x.rows, O = w.count / I
        precondition(w.count == O * I, "Linear: weight \(w.shape) does not take input \(x.shape)")
        var y = [T](repeating: 0, count: R * O)
        for r in 0..<R {
            for o in 0..<O {
                var s: T = b?.data[o] ?? 0
                for i in 0..<I { s += x.data[r * I + i] * w.data[o * I + i] }
                y[r * O + o] = s
            }
        }
        return Tensor(shape: Array(x.shape.dropLast()) + [O], data: y)
    }

    /// dx[r, i] += sum_o dy[r, o] W[o, i]
    public static func backwardInputPlain<T: RefScalar>(dy: Tensor<T>, weight w: Tensor<T>, dx: inout Tensor<T>) {
        let O = dy.lastDim, R = dy.rows, I = w.count / O
        for r in 0..<R {
            for i in 0..<I {
                var s: T = 0
                for o in 0..<O { s += dy.data[r * O + o] * w.data[o * I + i] }
                dx.data[r * I + i] += s
            }
        }
    }

    /// dW[o, i] += sum_r dy[r, o] x[r, i];  db[o] += sum_r dy[r, o]
    public static func backwardParamsPlain<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dw: inout Tensor<T>, db: inout Tensor<T>?) {
        let O = dy.lastDim, R = dy.rows, I = x.lastDim
        for o in 0..<O {
            for i in 0..<I {
                var s: T = 0
                for r in 0..<R { s += dy.data[r * O + o] * x.data[r * I + i] }
                dw.data[o * I + i] += s
            }
        }
        if db != nil { biasGradient(dy: dy, db: &db!) }
    }
}
