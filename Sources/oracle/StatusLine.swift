import Foundation
import SDDiTReference

/// A one-line status on stderr while a long run works: redrawn in place when stderr is a
/// terminal (what is running, elapsed seconds), nothing at all otherwise.
final class StatusLine {
    let tty = isatty(STDERR_FILENO) != 0
    let started = ContinuousClock.now
    var shown = false

    func show(_ s: String) {
        guard tty else { return }
        let t = (ContinuousClock.now - started).seconds
        FileHandle.standardError.write(String(format: "\r%@  (%.0f s)\u{1B}[K", s, t).data(using: .utf8)!)
        shown = true
    }

    func clear() {
        if shown { FileHandle.standardError.write("\r\u{1B}[K".data(using: .utf8)!) }
        shown = false
    }
}

/// While `body` runs, a status line for the float64 reference on a terminal: the run, the
/// block, the pass, the time so far and an estimate of what is left (from the work done).
func withReferenceProgress<R>(_ body: () throws -> R) rethrows -> R {
    let status = StatusLine()
    guard status.tty else { return try body() }
    let lock = NSLock(), box = UncheckedStatus(status)
    RefProgress.hook = { e in
        lock.lock(); defer { lock.unlock() }
        var s = "\(e.label): \(e.part) block \(e.block + 1)/\(e.blocks) \(e.backward ? "backward" : "forward")"
        if e.total > 0 && e.done <= e.total {
            s += String(format: ", %.0f%%", 100 * Double(e.done) / Double(e.total))
            if e.done > 2 { s += String(format: ", about %.0f s left", e.elapsed / Double(e.done) * Double(e.total - e.done)) }
        }
        box.value.show(s)
    }
    defer { RefProgress.hook = nil; status.clear() }
    return try body()
}

struct UncheckedStatus<V>: @unchecked Sendable { let value: V; init(_ v: V) { value = v } }
