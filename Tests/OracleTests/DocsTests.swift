import Foundation
import Testing
import TestSupport
import SDDiTCore

// docs/ARCHITECTURE.md is the map from SPEC names to code: every file it names exists, and
// every SPEC activation name (block indices as i) has a row.
@Suite("Architecture map")
struct DocsTests {
    static let text = (try? String(contentsOf: repoRoot.appendingPathComponent("docs/ARCHITECTURE.md"), encoding: .utf8)) ?? ""

    @Test func everyNamedFileExists() throws {
        #expect(!Self.text.isEmpty, "docs/ARCHITECTURE.md is missing")
        let sources = FileManager.default.enumerator(atPath: repoRoot.appendingPathComponent("Sources").path)?
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") } ?? []
        let named = Self.text.matches(of: /`([A-Za-z0-9_\/]+\.swift)`/).map { String($0.output.1) }
        #expect(named.count > 30, "only \(named.count) files named")
        for f in Set(named) {
            #expect(sources.contains { $0 == f || $0.hasSuffix("/" + f) } || FileManager.default.fileExists(atPath: repoRoot.appendingPathComponent(f).path), "docs/ARCHITECTURE.md names \(f), which does not exist")
        }
    }

    @Test func everySPECNameHasARow() {
        let names = Set(ActivationName.all(.tiny).map { $0.replacing(/\.\d+$/, with: ".i") })
        for n in names { #expect(Self.text.contains("`\(n)`"), "docs/ARCHITECTURE.md has no row for \(n)") }
        for l in LossName.all where l != LossName.total { #expect(Self.text.contains("`\(l)`"), "no row for loss \(l)") }
    }
}
