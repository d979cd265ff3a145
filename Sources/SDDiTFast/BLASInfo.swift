import COpenBLAS
import Dispatch
import Glibc

/// OpenBLAS's kernel set and threading build, and this machine's sgemm / dgemm peak (for
/// `oracle bench`). The fast path's worker count is `FastThreads.workers`.
public enum BLASInfo {
    /// The kernel set OpenBLAS picked for this CPU (e.g. SkylakeX, Haswell).
    public static var coreName: String { String(cString: openblas_get_corename()) }
    /// 0 sequential, 1 pthreads, 2 OpenMP.
    public static var parallelMode: Int { Int(openblas_get_parallel()) }

    /// Monotonic seconds.
    public static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    /// Best GFLOP/s of row-major C = A B on n x n x n float32 over `reps` timed runs after one
    /// untimed run (2 n^3 FLOPs per run), computed as the fast path computes every product:
    /// single-threaded OpenBLAS sgemm on fixed tiles spread over the fast path's threads.
    public static func sgemmPeak(n: Int = 2048, reps: Int = 5) -> (gflops: Double, seconds: [Double]) {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: n * n), b = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        defer { a.deallocate(); b.deallocate(); c.deallocate() }
        for i in 0..<(n * n) { a[i] = Float((i * 7) % 13) * 0.01 - 0.06; b[i] = Float((i * 5) % 11) * 0.01 - 0.05; c[i] = 0 }
        return bestOf(reps, flops: 2 * Double(n) * Double(n) * Double(n)) { sgemmTiled(false, false, n, n, n, 1, a, n, b, n, 0, c, n) }
    }

    /// The same for float64 (cblas_dgemm on the same tiles): the yardstick of the reference's
    /// speed in `oracle bench`, for the figure only (the reference itself calls no BLAS).
    public static func dgemmPeak(n: Int = 2048, reps: Int = 5) -> (gflops: Double, seconds: [Double]) {
        FastThreads.ensureSingleThreadedBLAS()
        let a = UnsafeMutablePointer<Double>.allocate(capacity: n * n), b = UnsafeMutablePointer<Double>.allocate(capacity: n * n)
        let c = UnsafeMutablePointer<Double>.allocate(capacity: n * n)
        defer { a.deallocate(); b.deallocate(); c.deallocate() }
        for i in 0..<(n * n) { a[i] = Double((i * 7) % 13) * 0.01 - 0.06; b[i] = Double((i * 5) % 11) * 0.01 - 0.05; c[i] = 0 }
        let bounds = sgemmTiles(n, n, n).bounds, tiles = bounds.count - 1
        let io = UncheckedSendable((UnsafePointer(a), UnsafePointer(b), c))
        return bestOf(reps, flops: 2 * Double(n) * Double(n) * Double(n)) {
            DispatchQueue.concurrentPerform(iterations: tiles) { i in
                let (a, b, c) = io.value
                let lo = bounds[i], rows = bounds[i + 1] - lo
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(n), Int32(n), 1, a + lo * n, Int32(n),
                            b, Int32(n), 0, c + lo * n, Int32(n))
            }
        }
    }

    /// Best GFLOP/s of `run` over `reps` timed runs after one untimed run, and the times.
    static func bestOf(_ reps: Int, flops: Double, _ run: () -> Void) -> (gflops: Double, seconds: [Double]) {
        run()
        var ts: [Double] = []
        for _ in 0..<max(reps, 1) {
            let t0 = now(); run(); ts.append(now() - t0)
        }
        return (flops / ts.min()! / 1e9, ts)
    }
}

/// How many tiles the fast path splits a C[M, N] = A[M, K] B[K, N] product into (a function of
/// the shape alone; see `sgemmTiles`).
public func sgemmTileCount(_ M: Int, _ N: Int, _ K: Int) -> Int { sgemmTiles(M, N, K).bounds.count - 1 }
