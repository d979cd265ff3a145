import Dispatch

// Element-wise layers over the cores. Each element's value is computed by the same
// expression wherever it runs, so any split of the indices gives the same bits; the split is
// fixed by the count and `Product.threads` anyway.
enum Parallel {
    /// body(lo, hi) over [0, n), in up to `Product.threads` contiguous chunks of at least `minimum`.
    static func ranges(_ n: Int, minimum: Int = 1 << 14, _ body: (Int, Int) -> Void) {
        let t = min(Product.threads, max(1, n / minimum))
        if t <= 1 { body(0, n); return }
        withoutActuallyEscaping(body) { f in
            let box = UncheckedBox(f)
            DispatchQueue.concurrentPerform(iterations: t) { c in box.value(n * c / t, n * (c + 1) / t) }
        }
    }

    /// body(lo, hi) over [0, n) tasks of uneven cost, handed out one at a time to whichever
    /// thread is free (each task writes its own outputs, so who runs it changes nothing).
    static func tasks(_ n: Int, _ body: (Int, Int) -> Void) {
        if Product.threads <= 1 || n <= 1 { body(0, n); return }
        withoutActuallyEscaping(body) { f in
            let box = UncheckedBox(f)
            DispatchQueue.concurrentPerform(iterations: n) { i in box.value(i, i + 1) }
        }
    }
}

extension Tensor where T: RefScalar {
    /// y[i] = f(x[i]), spread over the cores (same bits as `map`).
    func elementwise(_ f: (T) -> T) -> Tensor<T> {
        var y = [T](repeating: 0, count: count)
        data.withUnsafeBufferPointer { x in y.withUnsafeMutableBufferPointer { y in
            let io = UncheckedBox((x.baseAddress!, y.baseAddress!))
            Parallel.ranges(count) { lo, hi in
                let (x, y) = io.value
                for i in lo..<hi { y[i] = f(x[i]) }
            }
        } }
        return Tensor(shape: shape, data: y)
    }
}

/// dx[i] += term(dy[i], x[i]) for an element-wise layer, spread over the cores.
func accumulateElementwise<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dx: inout Tensor<T>, _ term: (T, T) -> T) {
    let n = x.count
    dy.data.withUnsafeBufferPointer { g in x.data.withUnsafeBufferPointer { x in dx.data.withUnsafeMutableBufferPointer { d in
        let io = UncheckedBox((g.baseAddress!, x.baseAddress!, d.baseAddress!))
        Parallel.ranges(n) { lo, hi in
            let (g, x, d) = io.value
            for i in lo..<hi { d[i] += term(g[i], x[i]) }
        }
    } } }
}

// MARK: Double views of generic tensors (the kernels' entry: T is Double, so no copy is made)

/// `t` seen as Tensor<Double>; only when T is Double.
@inline(__always) func asDouble<T: RefScalar>(_ t: Tensor<T>) -> Tensor<Double> { unsafeBitCast(t, to: Tensor<Double>.self) }

/// Runs `body` on `t` seen as Tensor<Double> (T is Double), as the only owner of its storage
/// so that writing it copies nothing.
func withDoubleStorage<T: RefScalar>(_ t: inout Tensor<T>, _ body: (inout Tensor<Double>) -> Void) {
    var d = asDouble(t)
    t = Tensor(shape: [0], data: [])
    body(&d)
    t = unsafeBitCast(d, to: Tensor<T>.self)
}
