import Foundation
import SDDiTCore
import SDDiTExchange

/// A fast-path run on a file's setup in one precision mode: the per-tensor error level of a
/// correct run in that mode, which a file's errors are judged against (`Calibration`).
public final class CalibrationRun {
    public let backend: Backend
    var held: [String: NamedTensor]

    init(backend: Backend, held: [String: NamedTensor]) { self.backend = backend; self.held = held }

    /// Runs `backend` (a fast mode) on `setup` within `memory` bytes (default: this machine's).
    public static func run(_ backend: Backend, _ setup: RunSetup, memory: Double? = nil) throws -> CalibrationRun {
        CalibrationRun(backend: backend, held: try backend.run(setup, memory: memory))
    }

    /// Every path the run has.
    public var paths: [String] { Array(held.keys) }

    /// The run's result at `path` (nil: the run has none).
    public func tensor(_ path: String) throws -> NamedTensor? { held[path] }
}
