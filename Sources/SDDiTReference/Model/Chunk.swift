// adaLN chunking (SPEC §2.6): Linear(SiLU(c)) [N, k W] split into k pieces [N, W]
// in the order (shift1, scale1, gate1, shift2, scale2, gate2) or (shift, scale).
enum Chunk {
    static func piece<T: RefScalar>(_ m: Tensor<T>, _ i: Int, of k: Int) -> Tensor<T> {
        let N = m.shape[0], W = m.lastDim / k
        var out = [T](); out.reserveCapacity(N * W)
        for n in 0..<N {
            let lo: Int = (n * k + i) * W
            out += m.data[lo..<(lo + W)]
        }
        return Tensor(shape: [N, W], data: out)
    }
    /// dm[:, i W ..< (i+1) W] += d
    static func addPiece<T: RefScalar>(_ d: Tensor<T>, _ i: Int, of k: Int, into dm: inout Tensor<T>) {
        let N = dm.shape[0], W = dm.lastDim / k
        for n in 0..<N { for j in 0..<W { dm.data[n * k * W + i * W + j] += d.data[n * W + j] } }
    }
}
