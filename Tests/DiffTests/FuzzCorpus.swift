import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange

/// Deterministic mutations of real fixture files: the corpus of the fuzz test. Byte-level
/// (truncation, bit flips anywhere, byte overwrites in the metadata-heavy head of the file)
/// and structural (datasets removed, reshaped, retyped, values made non-finite, inputs out of
/// range, config JSON broken or contradictory). `FUZZ_CASES` in the environment raises the
/// number of byte-level cases of the bounded default.
enum FuzzCorpus {
    struct Case { let name: String; let bytes: Data? ; let structured: ((inout Mutable) -> Void)? }

    /// A fixture's content as the writer takes it.
    struct Mutable {
        var config: ModelConfig
        var configJSON: String
        var datasets: [String: NamedTensor]
        var integers: [String: ([Int64], [Int])]
        var cfgScale: Double?
    }

    static var byteCases: Int { Int(ProcessInfo.processInfo.environment["FUZZ_CASES"] ?? "") ?? 150 }

    static func byteMutations(of data: Data, seed: UInt64) -> [Case] {
        var rng = SeededRandom(seed: seed)
        var out: [Case] = []
        for i in 0..<byteCases {
            var b = [UInt8](data)
            let kind = i % 3
            switch kind {
            case 0:
                b = Array(b.prefix(Int(rng.next() % UInt64(b.count))))
            case 1:
                for _ in 0..<[1, 4, 32][Int(rng.next() % 3)] {
                    let j = Int(rng.next() % UInt64(b.count)); b[j] ^= UInt8(1) << UInt8(rng.next() % 8)
                }
            default:
                for _ in 0..<[1, 4][Int(rng.next() % 2)] {
                    let j = Int(rng.next() % UInt64(min(b.count, 8192))); b[j] = UInt8(rng.next() % 256)
                }
            }
            out.append(Case(name: ["truncated", "bit flips", "metadata bytes"][kind] + " #\(i)", bytes: Data(b), structured: nil))
        }
        return out
    }

    static func structuralMutations() -> [Case] {
        func c(_ n: String, _ f: @escaping (inout Mutable) -> Void) -> Case { Case(name: n, bytes: nil, structured: f) }
        return [
            c("activation removed") { $0.datasets["activations/student.dec.block.1"] = nil },
            c("gradient removed") { $0.datasets["grads/blocks.0.attn.qkv.weight"] = nil },
            c("parameter removed") { $0.datasets["params/blocks.1.mlp.fc2.bias"] = nil },
            c("teacher parameter removed") { $0.datasets["teacher/head.mlp.0.weight"] = nil },
            c("input removed") { $0.datasets["inputs/noise_t"] = nil },
            c("activation reshaped") { m in var t = m.datasets["activations/student.c"]!; t.shape = [t.shape.reduce(1, *)]; m.datasets["activations/student.c"] = t },
            c("parameter reshaped") { m in var t = m.datasets["params/x_embedder.proj.bias"]!; t.shape = [1, t.shape[0]]; m.datasets["params/x_embedder.proj.bias"] = t },
            c("parameter wrong rank") { m in var t = m.datasets["params/blocks.0.attn.qkv.weight"]!; t.shape = [t.shape.reduce(1, *)]; m.datasets["params/blocks.0.attn.qkv.weight"] = t },
            c("parameter wrong size") { m in var t = m.datasets["params/cls_token"]!; t.values.removeLast(); t.shape = [t.values.count]; m.datasets["params/cls_token"] = t },
            c("parameter NaN") { $0.datasets["params/head.mlp.2.weight"]!.values[3] = .nan },
            c("input Inf") { $0.datasets["inputs/x0"]!.values[0] = .infinity },
            c("activation NaN") { $0.datasets["activations/student.D"]!.values[7] = .nan },
            c("loss perturbed") { $0.datasets["losses/total"]!.values[0] += 1e-3 },
            c("label out of range") { $0.integers["inputs/labels"]!.0[0] = 99 },
            c("negative label") { $0.integers["inputs/labels"]!.0[1] = -1 },
            c("sigma zero") { $0.datasets["inputs/sigma_s"]!.values[0] = 0 },
            c("sigma negative") { $0.datasets["inputs/sigma_s"]!.values[1] = -0.5 },
            c("mask unequal visible counts") { m in m.integers["inputs/mask"]!.0[0] = 1 - m.integers["inputs/mask"]!.0[0] },
            c("mask value 2") { $0.integers["inputs/mask"]!.0[2] = 2 },
            c("labels as floats") { m in let v = m.integers.removeValue(forKey: "inputs/labels")!; m.datasets["inputs/labels"] = NamedTensor(shape: v.1, values: v.0.map { Double($0) + 0.5 }, precision: .float64) },
            c("config malformed JSON") { $0.configJSON = "{\"hidden_size\": 32," },
            c("config missing key") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"depth\"", with: "\"depht\"") },
            c("config heads do not divide width") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"num_heads\": 4", with: "\"num_heads\": 5") },
            c("config odd input size") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"input_size\": 8", with: "\"input_size\": 7") },
            c("config width not a multiple of 4") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"hidden_size\": 32", with: "\"hidden_size\": 30") },
            c("config absurd size") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"hidden_size\": 32", with: "\"hidden_size\": 1048576") },
            c("config huge but plausible") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"depth\": 2", with: "\"depth\": 4000") },
            c("config boolean for number") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"patch_size\": 2", with: "\"patch_size\": true") },
            c("config sigma_data zero") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"sigma_data\": 0.5", with: "\"sigma_data\": 0") },
            c("config mask ratio 1") { $0.configJSON = $0.configJSON.replacingOccurrences(of: "\"mask_ratio\": 0.25", with: "\"mask_ratio\": 1.0") },
        ]
    }
}
