import Foundation
import SDDiTReference

/// A one-line status on stderr while a long run works: redrawn in place when stderr is a
/// terminal (what is running, elapsed seconds), nothing at all otherwise. Safe to update from
/// any thread.
final class StatusLine: @unchecked Sendable {
    let tty = isatty(STDERR_FILENO) != 0
    let started = ContinuousClock.now
    private let lock = NSLock()
    private var shown = false

    func show(_ s: String) {
        guard tty else { return }
        lock.lock(); defer { lock.unlock() }
        let t = (ContinuousClock.now - started).seconds
        FileHandle.standardError.write(String(format: "\r%@  (%.0f s)\u{1B}[K", s, t).data(using: .utf8)!)
        shown = true
    }

    func clear() {
        lock.lock(); defer { lock.unlock() }
        if shown { FileHandle.standardError.write("\r\u{1B}[K".data(using: .utf8)!) }
        shown = false
    }
}

/// While `body` runs, a status line for the float64 reference on a terminal: the run, the
/// block, the pass, the percentage done and an estimate of what is left.
func withReferenceProgress<R>(_ body: () throws -> R) rethrows -> R {
    let status = StatusLine()
    guard status.tty else { return try body() }
    RefProgress.hook = { e in
        var s = "\(e.label): \(e.part) block \(e.block + 1)/\(e.blocks) \(e.backward ? "backward" : "forward")"
        if e.total > 0 && e.done <= e.total {
            s += String(format: ", %.0f%%", 100 * Double(e.done) / Double(e.total))
            if e.done > 2 { s += String(format: ", about %.0f s left", e.elapsed / Double(e.done) * Double(e.total - e.done)) }
        }
        status.show(s)
    }
    defer { RefProgress.hook = nil; status.clear() }
    return try body()
}
