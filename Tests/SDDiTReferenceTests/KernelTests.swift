import Foundation
import PropertyBased
import SDDiTReference
import Testing
import TestSupport

// The reference's kernels (Sources/SDDiTReference/Kernels) against the plain loops that define
// them: bit for bit, over random shapes (1, primes, sizes that are not multiples of the 8 x 8
// register tile, sizes past the caches), with non-zero accumulators for the `+=` products,
// and at 1, 2 and 3 threads. Any difference is a bug: the kernels promise the same sums in
// the same order, not a tolerance.

private func normals(_ n: Int, _ rng: inout SeededRandom) -> [Double] {
    // magnitudes over 2^-20..2^20 so that every rounding of the sums shows
    (0..<n).map { _ in rng.normal() * Double.pow(2, Double(Int(rng.next() % 41)) - 20) }
}

private func firstDifference(_ a: [Double], _ b: [Double]) -> String? {
    guard a.count == b.count else { return "count \(a.count) vs \(b.count)" }
    for i in 0..<a.count where a[i].bitPattern != b[i].bitPattern {
        return "index \(i): kernel \(a[i]) vs plain \(b[i]) (\(a.count) elements)"
    }
    return nil
}

@Suite("Reference kernels: the plain loops' bits", .serialized)
struct KernelTests {
    static let sizes = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 64, 97]

    func linearMatches(R: Int, I: Int, O: Int, seed: UInt64, bias: Bool) -> String? {
        var rng = SeededRandom(seed: seed)
        let x = Tensor(shape: [R, I], data: normals(R * I, &rng)), w = Tensor(shape: [O, I], data: normals(O * I, &rng))
        let b = bias ? Tensor(shape: [O], data: normals(O, &rng)) : nil
        let dy = Tensor(shape: [R, O], data: normals(R * O, &rng))
        if let d = firstDifference(Linear.forward(x, weight: w, bias: b).data, Linear.forwardPlain(x, weight: w, bias: b).data) {
            return "forward R \(R) I \(I) O \(O): \(d)"
        }
        let dx0 = Tensor(shape: [R, I], data: normals(R * I, &rng))
        var dx1 = dx0, dx2 = dx0
        Linear.backwardInput(dy: dy, weight: w, dx: &dx1)
        Linear.backwardInputPlain(dy: dy, weight: w, dx: &dx2)
        if let d = firstDifference(dx1.data, dx2.data) { return "backwardInput R \(R) I \(I) O \(O): \(d)" }
        let dw0 = Tensor(shape: [O, I], data: normals(O * I, &rng))
        var dw1 = dw0, dw2 = dw0
        var db1: Tensor<Double>? = bias ? Tensor(shape: [O], data: normals(O, &rng)) : nil, db2 = db1
        Linear.backwardParams(dy: dy, x: x, dw: &dw1, db: &db1)
        Linear.backwardParamsPlain(dy: dy, x: x, dw: &dw2, db: &db2)
        if let d = firstDifference(dw1.data, dw2.data) { return "backwardParams dW R \(R) I \(I) O \(O): \(d)" }
        if let d = firstDifference(db1?.data ?? [], db2?.data ?? []) { return "backwardParams db: \(d)" }
        return nil
    }

    func attentionMatches(N: Int, L: Int, heads: Int, hd: Int, seed: UInt64) -> String? {
        var rng = SeededRandom(seed: seed)
        let W = heads * hd
        let qkv = Tensor(shape: [N, L, 3 * W], data: (0..<(N * L * 3 * W)).map { _ in rng.normal() * 2 })
        let dy = Tensor(shape: [N, L, W], data: normals(N * L * W, &rng))
        let a = Attention.forward(qkv, heads: heads), b = Attention.forwardPlain(qkv, heads: heads)
        if let d = firstDifference(a.y.data, b.y.data) { return "attention forward N \(N) L \(L) heads \(heads) hd \(hd): \(d)" }
        if let d = firstDifference(a.saved.probs, b.saved.probs) { return "attention P: \(d)" }
        let d0 = Tensor(shape: qkv.shape, data: normals(qkv.count, &rng))
        var d1 = d0, d2 = d0
        Attention.backward(dy: dy, qkv: qkv, heads: heads, saved: b.saved, dqkv: &d1)
        Attention.backwardPlain(dy: dy, qkv: qkv, heads: heads, saved: b.saved, dqkv: &d2)
        if let d = firstDifference(d1.data, d2.data) { return "attention backward N \(N) L \(L) heads \(heads) hd \(hd): \(d)" }
        return nil
    }

    @Test func linearOverRandomShapes() async {
        await propertyCheck(count: 60, input: Gen.int(in: 0..<Self.sizes.count), Gen.int(in: 0..<Self.sizes.count),
                            Gen.int(in: 0..<Self.sizes.count), Gen.uint64(in: 0...UInt64.max)) { r, i, o, seed in
            let msg = linearMatches(R: Self.sizes[r], I: Self.sizes[i], O: Self.sizes[o], seed: seed, bias: seed % 2 == 0)
            #expect(msg == nil, "Linear through the kernels differs from the plain loops: \(msg ?? "")")
        }
    }

    /// Past the caches and over the parallel threshold: K 2053 (a prime; the panel is 128 KiB),
    /// and every thread count.
    @Test(arguments: [1, 2, 3])
    func largeProductsAtAnyThreadCount(_ threads: Int) {
        let saved = Product.threads
        Product.threads = threads
        defer { Product.threads = saved }
        #expect(linearMatches(R: 67, I: 2053, O: 41, seed: 1, bias: true) == nil, "Linear through the kernels differs from the plain loops at \(threads) threads")
        #expect(linearMatches(R: 514, I: 385, O: 129, seed: 2, bias: false) == nil, "Linear (no bias) through the kernels differs from the plain loops at \(threads) threads")
        #expect(attentionMatches(N: 2, L: 37, heads: 3, hd: 11, seed: 3) == nil, "attention through the kernels differs from the plain loops at \(threads) threads")
    }

    @Test func attentionOverRandomShapes() async {
        await propertyCheck(count: 40, input: Gen.int(in: 1...2), Gen.int(in: 1...23), Gen.int(in: 1...3),
                            Gen.int(in: 1...10), Gen.uint64(in: 0...UInt64.max)) { N, L, heads, hd, seed in
            let msg = attentionMatches(N: N, L: L, heads: heads, hd: hd, seed: seed)
            #expect(msg == nil, "attention through the kernels differs from the plain loops: \(msg ?? "")")
        }
    }

    /// Every instruction set this CPU has (AVX-512F, AVX2, SSE2) gives the plain loops' bits,
    /// so a machine that picks another one computes the same numbers.
    @Test(arguments: ["avx512f", "avx2", "sse2"])
    func everyInstructionSet(_ isa: String) throws {
        let saved = Product.isa
        defer { Product.useISA(saved) }
        try #require(Product.useISA(isa) || isa != "sse2", "SSE2, which every x86-64 has, could not be selected")
        guard Product.isa == isa else { return }   // this CPU lacks it
        #expect(linearMatches(R: 13, I: 257, O: 19, seed: 7, bias: true) == nil, "Linear through the \(isa) block differs from the plain loops")
        #expect(linearMatches(R: 514, I: 97, O: 131, seed: 8, bias: false) == nil, "Linear (no bias) through the \(isa) block differs from the plain loops")
        #expect(attentionMatches(N: 2, L: 29, heads: 2, hd: 9, seed: 9) == nil, "attention through the \(isa) block differs from the plain loops")
    }

    /// The same layer in Float80 goes through the plain loops (the kernels are Double only).
    @Test func float80TakesThePlainLoops() {
        var rng = SeededRandom(seed: 5)
        let x = Tensor(shape: [3, 5], data: normals(15, &rng).map { Float80($0) })
        let w = Tensor(shape: [4, 5], data: normals(20, &rng).map { Float80($0) })
        let a = Linear.forward(x, weight: w, bias: nil), b = Linear.forwardPlain(x, weight: w, bias: nil)
        #expect(a.data == b.data, "Float80 Linear.forward does not take the plain loops")
    }
}
