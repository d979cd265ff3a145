import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTDiff

// The calibration limits README.md and docs/DECISIONS.md quote are the code's (issue #19:
// docs that cannot drift). Two forms are checked:
// - a report line quoted from `oracle diff`, "the MODE level L (limit xN)": N must be
//   `CalibrationLimits.limit(MODE, path:)` for the line's dataset (an activation when the line
//   names none);
// - a limit quoted in prose or a table, "xN (`NAME`)" or "xN (`NAME`, `NAME2`)", NAME one of
//   the limit constants below: N must equal each named limit, and NAME must still be declared
//   in Sources/ (a renamed or moved constant leaves no stale name in the docs).
@Suite("Limits quoted in the docs")
struct DocLimitTests {
    static let documents = ["README.md", "docs/DECISIONS.md"]

    /// The limit constants by the name the docs give them, each read through
    /// `CalibrationLimits.limit`, which the verdicts use.
    static let limits: [String: Double] = [
        "CalibrationLimits.float32": CalibrationLimits.limit(.float32, path: "activations/student.D"),
        "CalibrationLimits.sampler": CalibrationLimits.limit(.float32, path: "sampler/x.1"),
        "CalibrationLimits.tf32": CalibrationLimits.limit(.tf32, path: "activations/student.D"),
        "CalibrationLimits.half": CalibrationLimits.limit(.bf16Autocast, path: "activations/student.D"),
        "CalibrationLimits.halfGradients": CalibrationLimits.limit(.bf16Autocast, path: "grads/x_embedder.proj.weight"),
    ]

    static func text(_ doc: String) throws -> String {
        try String(contentsOf: repoRoot.appendingPathComponent(doc), encoding: .utf8)
    }

    @Test func reportLinesQuoteTheCodesLimits() throws {
        var found = 0
        for doc in Self.documents {
            for (i, line) in try Self.text(doc).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                for m in line.matches(of: /the ([a-z0-9-]+) level [0-9.e+-]+ \(limit x([0-9.]+)\)/) {
                    found += 1
                    let mode = PrecisionMode(rawValue: String(m.output.1))
                    #expect(mode != nil, "\(doc):\(i + 1): unknown precision mode '\(m.output.1)' in a quoted report line")
                    guard let mode else { continue }
                    let path = line.firstMatch(of: /(?:FAIL|ok  ) ([a-z_]+\/\S+)/).map { String($0.output.1) } ?? "activations/student.D"
                    let limit = CalibrationLimits.limit(mode, path: path)
                    #expect(Double(m.output.2) == limit,
                            "\(doc):\(i + 1): quotes limit x\(m.output.2) for \(mode) (\(path)); the code's limit is x\(limit)")
                }
            }
        }
        #expect(found >= 2, "only \(found) quoted report lines with a limit found in \(Self.documents)")
    }

    @Test func quotedLimitsAreTheConstants() throws {
        let sources = FileManager.default.enumerator(atPath: repoRoot.appendingPathComponent("Sources").path)?
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") } ?? []
        let code = try sources.map { try String(contentsOf: repoRoot.appendingPathComponent("Sources/\($0)"), encoding: .utf8) }
            .joined(separator: "\n")
        var named: Set<String> = []
        for doc in Self.documents {
            let text = try Self.text(doc)
            // over the whole text: a line may break between the number and its name
            for m in text.matches(of: /\bx([0-9.]+)\s+\(((?:`[\w.]+`(?:,\s*)?)+)\)/) {
                let line = text[..<m.range.lowerBound].filter { $0 == "\n" }.count + 1
                for name in m.output.2.matches(of: /`([\w.]+)`/).map({ String($0.output.1) }) {
                    named.insert(name)
                    let value = Self.limits[name]
                    #expect(value != nil, "\(doc):\(line): x\(m.output.1) names `\(name)`, which is not a limit constant this test knows")
                    if let value {
                        #expect(Double(m.output.1) == value, "\(doc):\(line): quotes x\(m.output.1) for `\(name)`; the code's value is x\(value)")
                    }
                }
            }
        }
        #expect(named == Set(Self.limits.keys), "the docs name limits \(named.sorted()), expected every one of \(Self.limits.keys.sorted())")
        for name in Self.limits.keys.sorted() {
            // `Type.member`: the member declared (the type is CalibrationLimits in SDDiTCore/Tolerances.swift)
            let member = name.split(separator: ".").last.map(String.init) ?? name
            let declaration = try Regex("(?:let|var) [^\\n]*\\b\(member)\\b *[=:]")
            #expect(code.contains(declaration), "`\(name)`, named in the docs, is declared nowhere in Sources/")
        }
    }
}
