import Foundation
import SDDiTCore
import SDDiTExchange

/// A fast-path run on a file's setup in one precision mode: the per-tensor error level of a
/// correct run in that mode, which a file's errors are judged against (`Calibration`).
///
/// The run is the streamed fast step (`Backend.stream`: float32 model only, AdamW's first
/// step and the EMA one tensor at a time). Its results are held as Double when they take at
/// most a quarter of `memory`; larger ones (XL/2) are written as they come into a temporary
/// exchange file in float32 (float64 where the run keeps Double values: the losses, the
/// sampler's states and sigmas) under the system's temporary directory, read back on demand
/// with their precision labels, the same values as held; the file is deleted with the run. Either way the fast model is gone when `run` returns: a reference streamed afterwards
/// needs its own peak, not the sum.
public final class CalibrationRun {
    public let backend: Backend
    var held: [String: NamedTensor]
    /// The temporary file of a run too large to hold (nil: held).
    let file: ExchangeFile?
    /// The temporary file's path (nil: held in memory).
    public let filePath: String?
    /// Each result's precision label as the run gave it (the file stores float32 or float64).
    let labels: [String: Precision]

    init(backend: Backend, held: [String: NamedTensor]) { self.backend = backend; self.held = held; file = nil; filePath = nil; labels = [:] }
    init(backend: Backend, file: ExchangeFile, path: String, labels: [String: Precision]) {
        self.backend = backend; held = [:]; self.file = file; filePath = path; self.labels = labels
    }
    deinit { if let filePath { try? FileManager.default.removeItem(atPath: filePath) } }

    /// The fraction of `memory` the results may take held as Double; beyond it they go to a file.
    static let heldFraction = 0.25

    /// Runs `backend` (a fast mode) on `setup` within `memory` bytes (default: this machine's).
    public static func run(_ backend: Backend, _ setup: RunSetup, memory: Double? = nil) throws -> CalibrationRun {
        let available = memory ?? Double(ProcessInfo.processInfo.physicalMemory)
        try backend.checkFits(setup, memory: memory)
        if backend.estimatedResultsBytes(setup) <= heldFraction * available {
            var out: [String: NamedTensor] = [:]
            try backend.stream(setup, memory: memory) { out[$0] = $1 }
            return CalibrationRun(backend: backend, held: out)
        }
        let dir = FileManager.default.temporaryDirectory.path
        let path = (dir as NSString).appendingPathComponent("sddit-calibration-\(getpid())-\(UUID().uuidString).h5")
        do {
            let w = try ExchangeWriter.Stream(path, config: setup.config, configExtra: ["generator": "sddit-oracle \(backend.rawValue) (calibration)"])
            var labels: [String: Precision] = [:]
            try backend.stream(setup, memory: memory) { p, d in
                labels[p] = d.precision
                // values the run keeps in Double (losses, the sampler's x) are stored as float64
                var stored = d
                if d.precision != .float64, !d.values.allSatisfy({ Double(Float($0)) == $0 || $0.isNaN }) { stored.precision = .float64 }
                try w.write(p, stored)
            }
            try w.finish(cfgScale: setup.sampler?.cfgScale)
            return CalibrationRun(backend: backend, file: try ExchangeFile.read(path, resultsOnDemand: true), path: path, labels: labels)
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw error
        }
    }

    /// Whether the results went to a temporary file (they would not fit in memory held).
    public var spilled: Bool { file != nil }

    /// Every path the run has.
    public var paths: [String] { file.map { Array($0.index.keys) } ?? Array(held.keys) }

    /// The run's result at `path` (nil: the run has none), in its mode's precision.
    public func tensor(_ path: String) throws -> NamedTensor? {
        guard let file else { return held[path] }
        guard var d = try file.dataset(path) else { return nil }
        d.precision = labels[path] ?? d.precision   // the half types and TF32 are float32 on file
        return d
    }
}
