import CRefKernels

// The reference's products, fast and with the plain loops' exact bits.
//
//   C[m, n] (= or +=) start[n] + sum_{k = 0}^{K-1} A[m, k] B[k, n]
//
// Each output element is summed exactly as its plain loop sums it, `var s = start;
// for k in 0..<K { s += a * b }; C = s (or C += s)`: one rounding per multiply and per add
// (Swift never contracts a * b + c to a fused multiply-add), k ascending. The speed comes from
// computing 8 x 8 independent outputs at once (CRefKernels: AVX-512F, AVX2 or SSE2; vectorized
// across n, never across k), from
// packing B's columns into a contiguous panel, and from spreading blocks of outputs over the
// cores. No output depends on which thread computes it, so 1, 2 or N threads give the same bits.
// Double only: Float80 (and Float) go through the plain loops, which remain the definition.

/// A strided view of a matrix: element (i, j) at base[i * rowStride + j * colStride].
public struct StridedMatrix: @unchecked Sendable {
    public let base: UnsafePointer<Double>
    public let rowStride: Int, colStride: Int
    public init(_ base: UnsafePointer<Double>, rowStride: Int, colStride: Int) {
        self.base = base; self.rowStride = rowStride; self.colStride = colStride
    }
    @inline(__always) func at(_ i: Int, _ j: Int) -> Double { base[i * rowStride + j * colStride] }
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
        let nBlocks = (N + 7) / 8, mBlocks = (M + 7) / 8
        let byColumns = nBlocks >= mBlocks, total = byColumns ? nBlocks : mBlocks
        let c = UncheckedBox(C)
        // a fixed partition of the n-blocks (or m-blocks): which thread computes an output
        // changes nothing in how it is computed
        func blocks(_ lo: Int, _ hi: Int) {
            // panel[k * 8 + j] = B(k, n0 + j), then the 8 starting values
            let panel = UnsafeMutablePointer<Double>.allocate(capacity: max(K, 1) * 8 + 8)
            defer { panel.deallocate() }
            let s0 = panel + max(K, 1) * 8
            func block(nb: Int, mRange: Range<Int>) {
                let n0 = nb * 8, width = min(8, N - n0)
                // zero lanes past N are computed and dropped
                for k in 0..<K {
                    for j in 0..<8 { panel[k * 8 + j] = j < width ? B.at(k, n0 + j) : 0 }
                }
                for j in 0..<8 { s0[j] = start != nil && j < width ? start![n0 + j] : 0 }
                for mb in mRange {
                    let m0 = mb * 8
                    sddit_ref_block(A.base + m0 * A.rowStride, A.rowStride, A.colStride, min(8, M - m0), panel, K,
                                    s0, c.value + m0 * ldc + n0, ldc, width, store == .add ? 1 : 0)
                }
            }
            if byColumns {
                for nb in lo..<hi { block(nb: nb, mRange: 0..<mBlocks) }
            } else {
                for nb in 0..<nBlocks { block(nb: nb, mRange: lo..<hi) }
            }
        }
        if parallel && M * N * max(K, 1) >= parallelThreshold { Parallel.ranges(total, minimum: 1, blocks) } else { blocks(0, total) }
    }

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
