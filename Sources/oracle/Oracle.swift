import ArgumentParser
import SDDiTReference

@main
struct Oracle: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oracle",
        abstract: "The SD-DiT verification oracle.")
    func run() throws { print("oracle") }
}
