import Dispatch
import COpenBLAS
import Synchronization

// Threads: the fast path splits work over its own workers (Dispatch), and keeps OpenBLAS on
// one thread per call. No result depends on the worker count.

/// Runs body(lo, hi) over [0, n) split into contiguous chunks (4 per thread, taken by
/// whichever thread is free, so a core busy with something else delays little); serially when
/// n is small or there is one thread. For element- and row-wise work only: a body must not
/// carry a sum across its range, so that no result depends on the split.
@inline(__always) func parallelRanges(_ n: Int, minPerThread: Int = 16384, _ body: (Int, Int) -> Void) {
    let t = Swift.min(FastThreads.workers, Swift.max(1, n / minPerThread))
    if t <= 1 { body(0, n); return }
    let chunks = Swift.min(4 * t, Swift.max(1, n / Swift.max(1, minPerThread / 4)))
    withoutActuallyEscaping(body) { b in
        let box = UncheckedSendable(b)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in box.value(n * c / chunks, n * (c + 1) / chunks) }
    }
}

/// Runs body(worker, lo, hi) over [0, n) independent tasks, one contiguous chunk per worker
/// (worker < `workers`, each with its own scratch). A task's arithmetic must not depend on
/// which worker runs it; OpenBLAS calls inside a task are single-threaded (`serial: true`).
func parallelTasks(_ n: Int, workers: Int, _ body: (Int, Int, Int) -> Void) {
    let t = Swift.min(workers, n)
    if t <= 1 { body(0, 0, n); return }
    withoutActuallyEscaping(body) { b in
        let box = UncheckedSendable(b)
        DispatchQueue.concurrentPerform(iterations: t) { w in box.value(w, n * w / t, n * (w + 1) / t) }
    }
}

/// The fast path's worker threads, and OpenBLAS kept on one thread per call from the first
/// fast-path call on (OpenBLAS's thread count is process-wide: it is set to 1 once, before
/// any work, and never changed again, so concurrent models cannot change each other's bits).
/// The worker count (`oracle bench --threads`; by default OPENBLAS_NUM_THREADS, else all
/// cores) decides only how many workers share the work: no result depends on it (see
/// `sgemmTiled`, `parallelRanges`, `parallelTasks`). It may change at any time, even while
/// models run.
public enum FastThreads {
    /// OpenBLAS's own default (OPENBLAS_NUM_THREADS, else all cores), read before it is set to 1.
    private static let initial: Int = {
        let n = Int(openblas_get_num_threads())
        openblas_set_num_threads(1)
        return Swift.max(1, n)
    }()
    private static let count = Atomic<Int>(initial)
    /// The number of workers the fast path splits its work over.
    public static var workers: Int { count.load(ordering: .relaxed) }
    /// Sets the worker count (at least 1). OpenBLAS itself stays on one thread per call.
    public static func setWorkers(_ n: Int) { count.store(Swift.max(1, n), ordering: .relaxed) }
    @inline(__always) static func ensureSingleThreadedBLAS() { _ = initial }
}

/// Hands a closure over raw buffers to Dispatch's workers: each worker touches a disjoint
/// part of the buffers, and the call returns only when every worker is done.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

