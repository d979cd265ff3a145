import Foundation
import HDF5IO
import SDDiTCore


/// Writes a run in the SPEC §7 layout, atomically (temporary file, then rename).
public enum ExchangeWriter {
    public static func write(_ path: String, config: ModelConfig, configExtra: [String: Any] = [:],
                             datasets: [String: NamedTensor], integers: [String: ([Int64], [Int])] = [:],
                             cfgScale: Double? = nil, rawConfigJSON: String? = nil, precisionMode: PrecisionMode? = nil) throws {
        let w = try Stream(path, config: config, configExtra: configExtra, rawConfigJSON: rawConfigJSON, precisionMode: precisionMode)
        try w.write(datasets: datasets, integers: integers, config: config)
        try w.finish(cfgScale: cfgScale)
    }

    /// A file written one dataset at a time (a run too large to hold whole: `oracle dump` at
    /// XL/2), still atomic: nothing appears at `path` until `finish`; an error, `discard` or
    /// dropping the writer removes the temporary file.
    public final class Stream {
        let f: HDF5File
        /// `precisionMode`: the mode the run was made in, declared as the root attribute
        /// `precision_mode` (docs/DECISIONS.md 42).
        public init(_ path: String, config: ModelConfig, configExtra: [String: Any] = [:], rawConfigJSON: String? = nil,
                    precisionMode: PrecisionMode? = nil) throws {
            do {
                f = try HDF5File.create(path)
                try f.setStringAttribute("format", exchangeFormat)
                try f.setStringAttribute("config", rawConfigJSON ?? config.jsonString(extra: configExtra))
                if let m = precisionMode { try f.setStringAttribute("precision_mode", m.rawValue) }
            } catch { throw ExchangeError("\(error)") }
        }

        /// float32 and the half types as float32, float64 and Float80 as float64.
        public func write(_ p: String, _ d: NamedTensor) throws {
            do {
                switch d.precision {
                case .float32, .float16, .bfloat16, .tfloat32: try f.write(p, floats: d.values.map { Float($0) }, shape: d.shape)
                default: try f.write(p, doubles: d.values, shape: d.shape)
                }
            } catch { f.discard(); throw ExchangeError("\(error)") }
        }

        public func write(_ p: String, ints v: [Int64], shape: [Int]) throws {
            do { try f.write(p, int64s: v, shape: shape) } catch { f.discard(); throw ExchangeError("\(error)") }
        }

        /// Many at once: the floats in `DatasetOrder`, then the integers by path.
        public func write(datasets: [String: NamedTensor], integers: [String: ([Int64], [Int])], config: ModelConfig) throws {
            for p in DatasetOrder.sorted(Array(datasets.keys), config) { try write(p, datasets[p]!) }
            for (p, (v, shape)) in integers.sorted(by: { $0.key < $1.key }) { try write(p, ints: v, shape: shape) }
        }

        /// Writes `cfg_scale` on /sampler (when given), then closes and renames into place.
        public func finish(cfgScale: Double? = nil) throws {
            do {
                if let s = cfgScale { try f.setDoubleAttribute("cfg_scale", s, on: "sampler") }
                try f.close()
            } catch { f.discard(); throw ExchangeError("\(error)") }
        }

        public func discard() { f.discard() }
    }
}

extension Tensor where T == Double {
    public func named(_ p: Precision = .float64) -> NamedTensor { NamedTensor(shape: shape, values: data, precision: p) }
}
