import Foundation

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
