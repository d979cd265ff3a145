import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTDiff
import SDDiTExchange

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a config or a file: sizes, parameter counts by part, datasets present.",
        discussion: """
        Examples:
          oracle info XL/2     # SD-DiT-XL/2: ~740.6M trained student parameters
          oracle info fixtures/public_train_tiny.h5
        """)

    @Argument(help: "An exchange file, or a config name (tiny, S/2, B/2, XL/2).") var target: String

    func run() throws {
        try reportingErrors {
            if let cfg = ModelConfig.named(target), !FileManager.default.fileExists(atPath: target) {
                printConfig(cfg)
                return
            }
            let f = try ExchangeFile.read(target)
            print("file \(target) (format sddit-oracle/1)")
            printConfig(f.config)
            print("datasets (\(f.datasets.count)):")
            var groups: [String: Int] = [:]
            for k in f.datasets.keys { groups[String(k.split(separator: "/").first!), default: 0] += 1 }
            for (g, n) in groups.sorted(by: { $0.key < $1.key }) { print("  /\(g): \(n)") }
            if let s = f.cfgScale { print("cfg_scale \(s)") }
            print("precision_mode \(f.declaredMode.map { "\($0.rawValue) (declared)" } ?? "not declared (oracle diff infers it from the values)")")
            if !f.defaultedConfigKeys.isEmpty {
                print("config keys not in the file, defaults assumed: " + f.defaultedConfigKeys.map { k in "\(k) = \(f.config.value(ofOptionalKey: k).map { "\($0)" } ?? "?")" }.joined(separator: ", "))
            }
        }
    }

    func printConfig(_ c: ModelConfig) {
        let n = c.parameterCounts
        func m(_ x: Int) -> String { String(format: "%12d (%.2fM)", x, Double(x) / 1e6) }
        print("config \(c.name): input \(c.inputSize)x\(c.inputSize)x\(c.inChannels), patch \(c.patchSize) (T = \(c.tokens) tokens), D \(c.hiddenSize), depth \(c.depth), heads \(c.numHeads)")
        print("  decoder \(c.decoderHiddenSize)/\(c.decoderDepth)/\(c.decoderNumHeads), head \(c.headHiddenDim)/\(c.headBottleneckDim)/\(c.headOutDim), \(c.numClasses) classes")
        print("parameters (student = encoder + decoder + head):")
        print("  encoder   \(m(n.encoder))")
        print("  decoder   \(m(n.decoder))")
        print("  head      \(m(n.head))")
        print("  student   \(m(n.total))   trainable \(m(n.trainable))")
        print("  teacher   \(m(n.encoder + n.head))   (EMA encoder + head)")
    }
}
