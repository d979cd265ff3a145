import CRefKernels

// The reference's products, fast and with the plain loops' exact bits.
//
//   C[m, n] (= or +=) start[n] + sum_{k = 0}^{K-1} A[m, k] B[k, n]
//
// Each output element is summed exactly as its plain loop sums it, `var s = start;
// for k in 0..<K { s += a * b }; C = s (or C += s)`: one rounding per multiply and per add
// (Swift never contracts a * b + c to a fused multiply-add), k ascending. The speed comes from
// computing 8 x 8 independent outputs at once (CRefKernels: AVX-512F, AVX2 or SSE2; vectorized
// across n, never across k), from packing both operands into contiguous 8-wide blocks, from
// chunks of rows whose packed A stays in the L2 cache, and from spreading the chunks over the
// cores. No output depends on which thread computes it, so 1, 2 or N threads give the same bits.
// Double only: Float80 (and Float) go through the plain loops, which remain the definition.

/// A strided view of a matrix: element (i, j) at base[i * rowStride + j * colStride].
public struct StridedMatrix: @unchecked Sendable {
    public let base: UnsafePointer<Double>
    public let rowStride: Int, colStride: Int
    public init(_ base: UnsafePointer<Double>, rowStride: Int, colStride: Int) {
        self.base = base; self.rowStride = rowStride; self.colStride = colStride
    }
}

public enum Product {
    /// How the sum lands in C: replace, or add to what is there (`dx += s`).
    public enum Store: Sendable { case set, add }

    /// Outputs computed per task: below this many multiply-adds a product runs on one thread.
    static let parallelThreshold = 1 << 18
    /// Threads the kernels may use (any value gives the same bits).
    nonisolated(unsafe) public static var threads = max(1, System.cpuCount)

    /// C[m * ldc + n] (op)= start[n] + sum_k A(m, k) B(k, n), for m < M, n < N.
    public static func run(M: Int, N: Int, K: Int, A: StridedMatrix, B: StridedMatrix,
                           start: UnsafePointer<Double>?, C: UnsafeMutablePointer<Double>, ldc: Int,
                           store: Store, parallel: Bool = true) {
        guard M > 0 && N > 0 else { return }
        let mBlocks = (M + 7) / 8, nBlocks = (N + 7) / 8, k8 = 8 * max(K, 1)
        // Both operands packed once into 8-wide interleaved blocks (copies, no arithmetic), so
        // the block kernel streams them; then the outputs in chunks of `chunkRows` rows (their
        // packed A about fits the L2 cache) by ranges of 8-column blocks.
        let pa = UnsafeMutablePointer<Double>.allocate(capacity: mBlocks * k8)
        let pb = UnsafeMutablePointer<Double>.allocate(capacity: nBlocks * k8)
        defer { pa.deallocate(); pb.deallocate() }
        let io = UncheckedBox((pa, pb, C))
        let chunkBlocks = chunkRows / 8, chunks = (mBlocks + chunkBlocks - 1) / chunkBlocks
        let threaded = parallel && M * N * max(K, 1) >= parallelThreshold && threads > 1
        let split = threaded ? min(nBlocks, 2 * threads) : 1   // column ranges per chunk
        func pack(_ lo: Int, _ hi: Int) {   // blocks lo..<hi of A's, then B's
            let (pa, pb, _) = io.value
            for b in lo..<hi {
                if b < mBlocks { sddit_ref_pack(A.base, A.rowStride, A.colStride, M, K, pa, b, b + 1) }
                else { sddit_ref_pack(B.base, B.colStride, B.rowStride, N, K, pb, b - mBlocks, b - mBlocks + 1) }
            }
        }
        func tiles(_ lo: Int, _ hi: Int) {
            let (pa, pb, c) = io.value
            for t in lo..<hi {
                let chunk = t / split, part = t % split
                let mb0 = chunk * chunkBlocks, mb1 = min(mBlocks, mb0 + chunkBlocks)
                sddit_ref_tile(M, N, K, pa, pb, start, c, ldc, store == .add ? 1 : 0,
                               mb0, mb1, nBlocks * part / split, nBlocks * (part + 1) / split)
            }
        }
        if threaded {
            Parallel.tasks(mBlocks + nBlocks, pack)
            Parallel.tasks(chunks * split, tiles)
        } else {
            pack(0, mBlocks + nBlocks)
            tiles(0, chunks * split)
        }
    }

    /// Rows of C per chunk: the packed A of 256 rows (K = 384: 786 KB) about fits the L2 cache,
    /// and is read once per 8-column block. (Single core, S/2 shapes: 39-41 GFLOP/s at 256 rows,
    /// 33-39 at 64 or 128, 16-34 unchunked; the dW products' 10 before packing.)
    static let chunkRows = 256

    /// Process-wide (glibc): freed arrays up to 32 MiB stay on the heap for reuse; a run of the
    /// reference then spends no quarter of its time zeroing fresh pages. Numbers do not change.
    public static func keepFreedMemory() { sddit_keep_freed_memory() }

    /// The instruction set of the block kernel on this CPU.
    public static var isa: String { String(cString: sddit_ref_isa()) }

    /// Selects the block kernel's instruction set ("avx512f", "avx2", "sse2") if this CPU has
    /// it; the bits are the same on each (tests run all of them).
    @discardableResult
    public static func useISA(_ name: String) -> Bool { sddit_ref_set_isa(name) != 0 }
}

/// A closure or pointer handed to concurrentPerform's tasks, which write disjoint outputs.
struct UncheckedBox<V>: @unchecked Sendable {
    let value: V
    init(_ v: V) { value = v }
}

enum System {
    static var cpuCount: Int {
        #if canImport(Glibc)
        return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        return 1
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#endif
