// Where a running reference is, block by block, for a progress line (`oracle diff` and
// `oracle dump` show one on a terminal). Nothing is computed differently when it is watched.

/// One DiT block done: which part ("student.enc", "teacher.enc", "student.dec"), which block
/// of how many, forward or backward, and the run's work done so far out of its total
/// (forward block = 1 unit, backward block = 2; total 0 when the run did not say).
public struct RefProgressEvent: Sendable {
    public let label: String, part: String, block: Int, blocks: Int, backward: Bool
    public let done: Int, total: Int
    /// Seconds since the run began.
    public let elapsed: Double
}

public enum RefProgress {
    /// Called after every block while set. Set it before a run and clear it after.
    nonisolated(unsafe) public static var hook: (@Sendable (RefProgressEvent) -> Void)?
    nonisolated(unsafe) static var label = "", done = 0, total = 0
    nonisolated(unsafe) static var started = ContinuousClock.now

    /// Starts counting a run of `total` units (`units(...)`), named `label` in the events.
    /// (Nothing while no hook is set: runs in parallel, as in the tests, share no state.)
    public static func begin(_ label: String, total: Int) {
        guard hook != nil else { return }
        self.label = label; done = 0; self.total = total; started = .now
    }

    /// Units of a training step (student and teacher encoders and the decoder forward, the
    /// student's backward) and of `evaluations` denoiser calls.
    public static func units(_ cfg: ModelConfig, trainingStep: Bool, evaluations: Int) -> Int {
        (trainingStep ? 4 * cfg.depth + 3 * cfg.decoderDepth : 0) + evaluations * (cfg.depth + cfg.decoderDepth)
    }

    @inline(__always) static func block(_ part: String, _ i: Int, of n: Int, backward: Bool = false) {
        guard let h = hook else { return }
        done += backward ? 2 : 1
        let d = ContinuousClock.now - started
        let elapsed = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        h(RefProgressEvent(label: label, part: part, block: i, blocks: n, backward: backward, done: done, total: total, elapsed: elapsed))
    }
}
