import Foundation
import Testing
import TestSupport
import SDDiTCore

// docs/ARCHITECTURE.md is the map from SPEC names to code: every SPEC activation name (block
// indices as i) has a row (that every file it names exists is DocPathTests' job).
// Package.swift declares every import between the package's modules.
@Suite("Architecture map")
struct DocsTests {
    static let text = (try? String(contentsOf: repoRoot.appendingPathComponent("docs/ARCHITECTURE.md"), encoding: .utf8)) ?? ""

    @Test func everySPECNameHasARow() {
        #expect(!Self.text.isEmpty, "docs/ARCHITECTURE.md is missing")
        let names = Set(ActivationName.all(.tiny).map { $0.replacing(/\.\d+$/, with: ".i") })
        for n in names { #expect(Self.text.contains("`\(n)`"), "docs/ARCHITECTURE.md has no row for \(n)") }
        for l in LossName.all where l != LossName.total { #expect(Self.text.contains("`\(l)`"), "no row for loss \(l)") }
    }

    /// Each target's sources import only modules its Package.swift entry names.
    @Test func packageDeclaresEveryImport() throws {
        let pkg = try String(contentsOf: repoRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        let starts = pkg.matches(of: /\.(?:target|testTarget|executableTarget|systemLibrary)\(\s*name:\s*"(\w+)"/)
        let targets = starts.map { String($0.output.1) }
        let known = Set(targets + ["RealModule", "PropertyBased", "ArgumentParser"])
        var checked = 0
        for (i, m) in starts.enumerated() {
            let name = String(m.output.1)
            let block = pkg[m.range.lowerBound..<(i + 1 < starts.count ? starts[i + 1].range.lowerBound : pkg.endIndex)]
            let declared = Set(block.matches(of: /"(\w+)"/).map { String($0.output.1) })
            for dir in ["Sources/\(name)", "Tests/\(name)"] {
                let root = repoRoot.appendingPathComponent(dir)
                guard let files = FileManager.default.enumerator(atPath: root.path) else { continue }
                for case let f as String in files where f.hasSuffix(".swift") {
                    let text = try String(contentsOf: root.appendingPathComponent(f), encoding: .utf8)
                    for imp in text.matches(of: /(?m)^(?:@_exported |@testable )?import (\w+)/).map({ String($0.output.1) })
                    where known.contains(imp) && imp != name {
                        checked += 1
                        #expect(declared.contains(imp), "\(dir)/\(f) imports \(imp), which Package.swift does not declare for \(name)")
                    }
                }
            }
        }
        #expect(checked > 100, "only \(checked) imports checked")
    }
}
