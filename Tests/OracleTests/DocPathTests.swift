import Foundation
import Testing
import TestSupport

// Every repository path that README.md, docs/DECISIONS.md and docs/ARCHITECTURE.md name
// exists (issue #19: docs that cannot drift). The rule for what counts as a path, applied
// to the whole text (backticked or not):
//
// - A token is a run of letters, digits and `_ . - /`, with `* < > { } $` kept in it so that
//   a pattern stays whole; anything else (space, backtick, brackets, parentheses, comma,
//   colon, quote) ends it. Trailing dots (a sentence's end) are dropped.
// - Not a repository path: a token starting with "/" (an HDF5 dataset such as
//   /train/history, a system file such as /proc/cpuinfo, what follows a URL's "https:"), and
//   a token holding `* < > { } $` (a pattern or placeholder: regress/records/*.json,
//   fixtures/public_*.h5, regress/records/<UTC time>-...).
// - `../shared/REST` is resolved in the shared directory beside the repository (skipped only
//   where that directory is absent altogether).
// - A token whose first component is a top-level entry of the repository (Sources, Tests,
//   tools, docs, fixtures, regress, .ci, ...) is resolved from the root, whatever it ends in
//   (a directory, a fixture's .h5, a script).
// - Any other token with a "/" counts when it ends in a source or document extension
//   (.swift .py .sh .c .h .md .json .png .svg) or in "/" after a name of 3 or more
//   characters (a directory): it is relative to some folder (`Layers/FastEncoder.swift`,
//   `SDDiTDiff/Calibration.swift`, `Kernels/`) and resolves when a file (or, ending in "/", a
//   directory) of the repository or the shared directory ends with "/" + token. Other tokens
//   with a "/" are names, ratios and formulas (activations/student.D, after_step/params/KEY,
//   lr/10, fp16/bf16, 0.9/0.999, the g/ of lr g/(|g| + eps)).
// - A token without a "/" counts when it ends in .swift, .py or .sh, such as `FastStep.swift`,
//   and resolves the same way (.c and .h alone are activation names: student.c, BRANCH.c).
//   Output and example files without a "/" (tiny.h5, my_run.h5, float80-vs-double.txt) are
//   not repository files and do not count.
// - Outputs: a token whose first component is a directory .gitignore names (test-reports/,
//   calib/, out/, .build/) is not checked.
@Suite("Paths named in the docs")
struct DocPathTests {
    static let documents = ["README.md", "docs/DECISIONS.md", "docs/ARCHITECTURE.md"]
    static let pathExtensions: Set<String> = ["swift", "py", "sh", "c", "h", "md", "json", "png", "svg"]
    static let sourceExtensions: Set<String> = ["swift", "py", "sh"]
    static let sharedPrefix = "../shared/"

    /// A path a document names, with its 1-based line.
    struct Named: Equatable, CustomStringConvertible {
        var path: String
        var line: Int
        var description: String { "line \(line): \(path)" }
    }

    /// Directory names .gitignore lists (outputs, never repository files).
    static func ignoredDirectories(_ gitignore: String) -> Set<String> {
        var names: Set<String> = []
        for raw in gitignore.split(separator: "\n") {
            var l = raw.trimmingCharacters(in: .whitespaces)
            guard l.hasSuffix("/"), !l.hasPrefix("#") else { continue }
            l.removeLast()
            if l.hasPrefix("/") { l.removeFirst() }
            if !l.contains("/"), !l.contains("*") { names.insert(l) }
        }
        return names
    }

    /// The paths `text` names, by the rule above. `topLevel`: the repository's top-level
    /// entries; `ignored`: output directories.
    static func paths(in text: String, topLevel: Set<String>, ignored: Set<String>) -> [Named] {
        var out: [Named] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            for m in line.matches(of: /[A-Za-z0-9_.\-\/*<>{}$]+/) {
                var t = String(m.output)
                while t.hasSuffix(".") { t.removeLast() }
                guard !t.isEmpty, !t.hasPrefix("/"), !t.contains(where: { "*<>{}$".contains($0) }) else { continue }
                let first = t.split(separator: "/").first.map(String.init) ?? ""
                if ignored.contains(first) || (first.hasPrefix(".build")) { continue }
                let ext = t.contains(".") ? String(t.split(separator: ".").last ?? "") : ""
                let counts: Bool
                if t.hasPrefix(sharedPrefix) || (t.contains("/") && topLevel.contains(first)) {
                    counts = true
                } else if t.contains("/") {
                    counts = pathExtensions.contains(ext) || (t.hasSuffix("/") && t.count > 3)
                } else {
                    counts = sourceExtensions.contains(ext) && ext != t
                }
                if counts { out.append(Named(path: t, line: i + 1)) }
            }
        }
        return out
    }

    /// Where paths resolve: the repository's files and directories (directories with a
    /// trailing "/"), relative to the root, and the shared directory's as "../shared/...".
    struct Tree {
        var root: URL
        var shared: URL
        var ignored: Set<String>
        var topLevel: Set<String>
        var entries: [String]

        init(root: URL, shared: URL) {
            self.root = root; self.shared = shared
            ignored = Self.ignoredNames(root)
            let skip = ignored.union([".git"])
            func walk(_ dir: URL, _ prefix: String) -> [String] {
                let fm = FileManager.default
                guard let names = try? fm.contentsOfDirectory(atPath: dir.path) else { return [] }
                var found: [String] = []
                for n in names.sorted() where !skip.contains(n) && !n.hasPrefix(".build") && n != "__pycache__" {
                    var isDir: ObjCBool = false
                    let url = dir.appendingPathComponent(n)
                    guard fm.fileExists(atPath: url.path, isDirectory: &isDir) else { continue }
                    if isDir.boolValue {
                        found.append(prefix + n + "/")
                        found += walk(url, prefix + n + "/")
                    } else {
                        found.append(prefix + n)
                    }
                }
                return found
            }
            topLevel = Set(((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
                .filter { !skip.contains($0) && !$0.hasPrefix(".build") })
            entries = walk(root, "") + walk(shared, Self.sharedPrefixName)
        }

        static let sharedPrefixName = DocPathTests.sharedPrefix
        static func ignoredNames(_ root: URL) -> Set<String> {
            DocPathTests.ignoredDirectories((try? String(contentsOf: root.appendingPathComponent(".gitignore"), encoding: .utf8)) ?? "")
        }

        var hasShared: Bool { FileManager.default.fileExists(atPath: shared.path) }

        /// Whether `p` names an existing file or directory (nil: not checkable here, a
        /// ../shared path where the shared directory is absent).
        func resolves(_ p: String) -> Bool? {
            let wantsDir = p.hasSuffix("/")
            func exists(_ url: URL) -> Bool {
                var isDir: ObjCBool = false
                return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) && (!wantsDir || isDir.boolValue)
            }
            if p.hasPrefix(DocPathTests.sharedPrefix) {
                guard hasShared else { return nil }
                return exists(shared.appendingPathComponent(String(p.dropFirst(DocPathTests.sharedPrefix.count))))
            }
            let first = p.split(separator: "/").first.map(String.init) ?? ""
            if p.contains("/"), topLevel.contains(first) { return exists(root.appendingPathComponent(p)) }
            return entries.contains { $0 == p || $0.hasSuffix("/" + p) }
        }
    }

    static let tree = Tree(root: repoRoot, shared: sharedDir)

    @Test func everyNamedPathExists() throws {
        var missing: [String] = [], checked = 0, unchecked = 0
        for doc in Self.documents {
            let text = try String(contentsOf: repoRoot.appendingPathComponent(doc), encoding: .utf8)
            let named = Self.paths(in: text, topLevel: Self.tree.topLevel, ignored: Self.tree.ignored)
            #expect(named.count > 10, "\(doc): only \(named.count) paths found; is the extractor broken?")
            for n in named {
                switch Self.tree.resolves(n.path) {
                case true?: checked += 1
                case false?: missing.append("\(doc):\(n.line): \(n.path)")
                case nil: unchecked += 1
                }
            }
        }
        Report.add("doc-paths.txt", ["paths named in \(Self.documents.joined(separator: ", ")): \(checked) exist, \(missing.count) missing, \(unchecked) under ../shared not checked (no shared directory)"]
                   + missing.map { "missing " + $0 })
        #expect(missing.isEmpty, "\(missing.count) paths named in the docs do not exist:\n\(missing.joined(separator: "\n"))")
        #expect(checked > 150, "only \(checked) paths checked; is the extractor broken?")
    }

    /// The extractor on a small text: what counts, what does not, and the lines.
    @Test func extractorRule() {
        let text = """
            See `Sources/SDDiTCore/Compare.swift`, Layers/FastEncoder.swift and tools/sddit_h5.py.
            Not paths: /train/history, https://example.com/a.swift, activations/student.D, lr/10, fp16/bf16,
            tiny.h5, fixtures/public_*.h5, regress/records/<UTC time>.json, test-reports/gradcheck.txt, Ampere+.
            Bare `FastStep.swift`; a directory `Kernels/`; shared [SPEC](../shared/SPEC.md); a fixture fixtures/golden_tiny.h5
            Names: student.c, `BRANCH.c`, lr·g/(|g|+eps), Sources/CRefKernels/ref_kernels.c
            """
        let found = Self.paths(in: text, topLevel: ["Sources", "Tests", "tools", "fixtures"], ignored: ["test-reports"])
        let expected = [Named(path: "Sources/SDDiTCore/Compare.swift", line: 1), Named(path: "Layers/FastEncoder.swift", line: 1),
                        Named(path: "tools/sddit_h5.py", line: 1), Named(path: "FastStep.swift", line: 4),
                        Named(path: "Kernels/", line: 4), Named(path: "../shared/SPEC.md", line: 4),
                        Named(path: "fixtures/golden_tiny.h5", line: 4), Named(path: "Sources/CRefKernels/ref_kernels.c", line: 5)]
        #expect(found == expected, "the extractor's paths differ from the rule's")
        #expect(Self.ignoredDirectories("# outputs\n.build/\n/calib/\ntest-reports/\n*.swp\n.build-*/\n") == [".build", "calib", "test-reports"],
                "the .gitignore directories differ")
    }

    /// The check can fail: made-up paths of each kind do not resolve, real ones do.
    @Test func madeUpPathsFail() {
        let t = Self.tree
        for p in ["Sources/SDDiTCore/NoSuchFile.swift", "Layers/FastNoSuchLayer.swift", "NoSuchFile.swift", "docs/NOSUCH.md",
                  "Sources/NoSuchModule/", "NoSuchFolder/", "SDDiTDiff/Compare.swift"] {
            #expect(t.resolves(p) == false, "made-up path \(p) resolves")
        }
        for p in ["Sources/SDDiTCore/Compare.swift", "SDDiTCore/Compare.swift", "Compare.swift", "Spec/", "Sources/SDDiTCore/",
                  "tools/sddit_h5.py", "fixtures/golden_tiny.h5"] {
            #expect(t.resolves(p) == true, "existing path \(p) does not resolve")
        }
        // a file is not a directory
        #expect(t.resolves("Sources/SDDiTCore/Compare.swift/") == false, "a file resolved as a directory")
    }
}
