import Foundation
import HDF5IO
import SDDiTCore


/// Writes a run in the SPEC §7 layout, atomically (temporary file, then rename).
public enum ExchangeWriter {
    public static func write(_ path: String, config: ModelConfig, configExtra: [String: Any] = [:],
                             datasets: [String: NamedTensor], integers: [String: ([Int64], [Int])] = [:],
                             cfgScale: Double? = nil, rawConfigJSON: String? = nil) throws {
        let f: HDF5File
        do { f = try HDF5File.create(path) } catch { throw ExchangeError("\(error)") }
        do {
            try f.setStringAttribute("format", exchangeFormat)
            try f.setStringAttribute("config", rawConfigJSON ?? config.jsonString(extra: configExtra))
            for p in DatasetOrder.sorted(Array(datasets.keys), config) {
                let d = datasets[p]!
                switch d.precision {
                case .float32, .float16, .bfloat16, .tfloat32:
                    try f.write(p, floats: d.values.map { Float($0) }, shape: d.shape)
                default:
                    try f.write(p, doubles: d.values, shape: d.shape)
                }
            }
            for (p, (v, shape)) in integers.sorted(by: { $0.key < $1.key }) { try f.write(p, int64s: v, shape: shape) }
            if let s = cfgScale { try f.setDoubleAttribute("cfg_scale", s, on: "sampler") }
            try f.close()
        } catch {
            f.discard()
            throw ExchangeError("\(error)")
        }
    }
}

extension Tensor where T == Double {
    public func named(_ p: Precision = .float64) -> NamedTensor { NamedTensor(shape: shape, values: data, precision: p) }
}
