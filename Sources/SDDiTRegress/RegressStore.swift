import Foundation
import Glibc
import SDDiTCore
import SDDiTExchange
import SDDiTFast

// `oracle regress`: a history of measured errors and timings kept in the repository.
// A store is a directory (default `regress/`):
//   regress/thresholds.json                       per-metric-kind thresholds (readable, with notes)
//   regress/records/<UTC timestamp>-<commit>.json  one record per run, never modified
// A record is written to a temporary file (a dot-name readers skip) in records/, flushed,
// then hard-linked to its final name (link(2) fails rather than replace an existing record)
// and the temporary name removed: a run that dies or fails before the link leaves the
// records as they were (at worst a stray dot-file, which readers ignore).

public struct RegressError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// One measured quantity. The kind is the first component of its name:
///   error/<config>/<mode>/<dataset>              value = max rel of the tensor (DiffReport's rule)
///   error/fixture/<file>/<backend>/<dataset>     the same for a fixture rerun by a backend
///   gradcheck/<config>/<direction>               value = rel err of a directional derivative
///   timing/<config>/<backend>/<case>_ms          value = median ms of repeated runs
public struct RegressMetric: Codable, Sendable, Equatable {
    /// error, gradcheck: relative error; timing: median milliseconds.
    public var value: Double
    /// error: max abs |a - e|; gradcheck: |analytic - numeric|.
    public var maxAbs: Double?
    /// The tolerance the value was judged against (error: the diff rule's rtol; gradcheck: its rtol).
    public var tol: Double?
    /// The verdict under that tolerance when measured.
    public var pass: Bool?
    /// timing: 1.4826 x the median absolute deviation of the repeats (a robust standard deviation), in ms.
    public var spread: Double?
    /// timing: every repeat, in ms.
    public var runs: [Double]?
    /// Position in the comparison order (activations: forward order), for the report.
    public var order: Int?
    /// error, after-step parameters only: the absolute allowance of the diff's rule for AdamW's
    /// amplified noise gradients (lr or 2 lr); growth within it is not a regression.
    public var noiseAbs: Double?

    public init(value: Double, maxAbs: Double? = nil, tol: Double? = nil, pass: Bool? = nil,
                spread: Double? = nil, runs: [Double]? = nil, order: Int? = nil, noiseAbs: Double? = nil) {
        self.value = value; self.maxAbs = maxAbs; self.tol = tol; self.pass = pass
        self.spread = spread; self.runs = runs; self.order = order; self.noiseAbs = noiseAbs
    }
    enum CodingKeys: String, CodingKey { case value, maxAbs = "max_abs", tol, pass, spread, runs, order, noiseAbs = "noise_abs" }

    /// A timing from repeated runs (ms): the median, and as spread 1.4826 x the median absolute
    /// deviation (a standard deviation that one stalled repeat cannot blow up).
    public static func timing(_ runs: [Double]) -> RegressMetric {
        let med = median(runs)
        return RegressMetric(value: round4(med), spread: round4(1.4826 * median(runs.map { abs($0 - med) })),
                             runs: runs.map { ($0 * 1000).rounded() / 1000 })
    }
    static func median(_ v: [Double]) -> Double {
        let s = v.sorted(), n = s.count
        return n == 0 ? 0 : n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// Four significant digits: a record stays short and diffable; errors need no more.
public func round4(_ x: Double) -> Double {
    guard x.isFinite, x != 0 else { return x }
    return Double(String(format: "%.4g", x)) ?? x
}

public struct RegressGit: Codable, Sendable, Equatable {
    public var commit: String
    public var dirty: Bool
    public init(commit: String, dirty: Bool) { self.commit = commit; self.dirty = dirty }
    public var short: String { commit == "unknown" ? "unknown" : String(commit.prefix(7)) }
}

public struct RegressMachine: Codable, Sendable, Equatable {
    public var hostname: String
    public var cpu: String
    public var cores: Int
    public var openblasCore: String
    public var threads: Int
    public var swift: String
    enum CodingKeys: String, CodingKey { case hostname, cpu, cores, openblasCore = "openblas_core", threads, swift }
    public init(hostname: String, cpu: String, cores: Int, openblasCore: String, threads: Int, swift: String) {
        self.hostname = hostname; self.cpu = cpu; self.cores = cores; self.openblasCore = openblasCore; self.threads = threads; self.swift = swift
    }
    /// Timings are compared only between runs with the same fingerprint.
    public var fingerprint: String { "\(cpu) | \(cores) cores | OpenBLAS \(openblasCore) | \(threads) threads" }
}

public struct RegressRecord: Codable, Sendable {
    public static let schemaName = "sddit-oracle-regress/1"
    public var schema = RegressRecord.schemaName
    /// The file name stem (set when read).
    public var id: String = ""
    public var battery: String
    /// ISO 8601, UTC.
    public var date: String
    public var durationS: Double
    public var git: RegressGit
    public var machine: RegressMachine
    /// What the battery ran with (seeds, batch, reps, the tolerance rules), for the reader.
    public var settings: [String: String]
    public var notes: [String]
    public var metrics: [String: RegressMetric]

    enum CodingKeys: String, CodingKey { case schema, battery, date, durationS = "duration_s", git, machine, settings, notes, metrics }

    public init(battery: String, date: String, durationS: Double, git: RegressGit, machine: RegressMachine,
                settings: [String: String], notes: [String], metrics: [String: RegressMetric]) {
        self.battery = battery; self.date = date; self.durationS = durationS; self.git = git; self.machine = machine
        self.settings = settings; self.notes = notes; self.metrics = metrics
    }

    /// The metric kind: the first component of the name.
    public static func kind(_ name: String) -> String { String(name.prefix { $0 != "/" }) }

    /// JSON: metadata pretty-printed with sorted keys, then "metrics" last, one metric per line
    /// in sorted order (so `git diff` of two records reads metric by metric). Valid JSON.
    public func encoded() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        var head = self
        head.metrics = [:]
        var text = String(decoding: try enc.encode(head), as: UTF8.self)
        // drop the empty "metrics" entry the encoder wrote, then append ours
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var kept: [String] = []
        var skipping = false
        for l in lines {
            if l.hasPrefix("  \"metrics\" : {") { skipping = !l.hasSuffix("}") && !l.hasSuffix("},"); continue }
            if skipping { if l.hasPrefix("  }") { skipping = false }; continue }
            kept.append(l)
        }
        // kept ends with "}"; the entry before it may lack a trailing comma
        while let last = kept.last, last.trimmingCharacters(in: .whitespaces).isEmpty { kept.removeLast() }
        kept.removeLast()   // "}"
        if var prev = kept.popLast() { if !prev.hasSuffix(",") { prev += "," }; kept.append(prev) }
        let one = JSONEncoder()
        one.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        one.nonConformingFloatEncodingStrategy = enc.nonConformingFloatEncodingStrategy
        var body: [String] = []
        for k in metrics.keys.sorted() {
            let key = String(decoding: try one.encode(k), as: UTF8.self)
            body.append("    \(key): " + String(decoding: try one.encode(metrics[k]!), as: UTF8.self))
        }
        text = kept.joined(separator: "\n") + "\n  \"metrics\" : {\n" + body.joined(separator: ",\n") + "\n  }\n}\n"
        return Data(text.utf8)
    }

    public static func decode(_ d: Data) throws -> RegressRecord {
        let dec = JSONDecoder()
        dec.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try dec.decode(RegressRecord.self, from: d)
    }
}

/// The directory of records and the thresholds file.
public struct RegressStore: Sendable {
    public let root: URL
    public init(_ path: String) { root = URL(fileURLWithPath: path) }
    public var recordsDir: URL { root.appendingPathComponent("records") }
    public var thresholdsURL: URL { root.appendingPathComponent("thresholds.json") }

    /// Record ids (file name stems), oldest first. Names start with the UTC timestamp, so
    /// name order is time order. Dot-files (temporaries of an interrupted write) are skipped.
    public func ids() throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
            throw RegressError("no regression store at '\(root.path)' (run `oracle regress record --store \(root.path)` first)")
        }
        guard FileManager.default.fileExists(atPath: recordsDir.path) else { return [] }
        let names = try FileManager.default.contentsOfDirectory(atPath: recordsDir.path)
        return names.filter { !$0.hasPrefix(".") && $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    public func load(_ id: String) throws -> RegressRecord {
        let url = recordsDir.appendingPathComponent(id + ".json")
        let d: Data
        do { d = try Data(contentsOf: url) } catch { throw RegressError("cannot read record '\(url.path)'") }
        do {
            var r = try RegressRecord.decode(d)
            r.id = id
            return r
        } catch {
            throw RegressError("record '\(url.path)' is not a valid \(RegressRecord.schemaName) record: \(Self.describe(error))")
        }
    }

    /// Every readable record, oldest first.
    public func loadAll() throws -> [RegressRecord] { try ids().map(load) }

    /// Resolves --baseline / a record reference: an exact id, `latest`, `latest~N` (N records
    /// before the latest), a unique prefix of an id, or a commit prefix (the newest record of
    /// that commit).
    public func resolve(_ ref: String, in all: [String]) throws -> String {
        guard !all.isEmpty else { throw RegressError("the store '\(root.path)' has no records") }
        if all.contains(ref) { return ref }
        if ref == "latest" { return all.last! }
        if ref.hasPrefix("latest~"), let n = Int(ref.dropFirst(7)), n >= 0 {
            guard n < all.count else { throw RegressError("'\(ref)': the store has only \(all.count) record(s)") }
            return all[all.count - 1 - n]
        }
        let pre = all.filter { $0.hasPrefix(ref) }
        if pre.count == 1 { return pre[0] }
        if pre.count > 1 { throw RegressError("'\(ref)' matches \(pre.count) records (\(pre.prefix(3).joined(separator: ", "))...); give more of the id") }
        if ref.count >= 4, ref.allSatisfy(\.isHexDigit) {
            let byCommit = all.filter { id in
                let parts = id.split(separator: "-")
                guard parts.count >= 2 else { return false }
                let c = String(parts[1])
                return c.hasPrefix(ref) || ref.hasPrefix(c)
            }
            if let last = byCommit.last { return last }
        }
        throw RegressError("no record '\(ref)' in '\(recordsDir.path)' (ids look like \(all.last!); also: latest, latest~N, a commit prefix)")
    }

    /// Before spending minutes on a battery: the records directory exists and is writable, or
    /// its nearest existing ancestor is a writable directory (nothing is created here).
    public func checkWritable() throws {
        var url = recordsDir
        while true {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) {
                guard isDir.boolValue else { throw RegressError("cannot keep a store at '\(root.path)': '\(url.path)' is a file, not a directory") }
                guard access(url.path, W_OK) == 0 else { throw RegressError("cannot write in '\(url.path)': \(String(cString: strerror(errno)))") }
                return
            }
            let parent = url.deletingLastPathComponent()
            if parent.path == url.path { return }
            url = parent
        }
    }

    /// Appends a record: temp file, fsync, link to the final name (never replacing one), unlink
    /// the temp, fsync the directory. `beforeLink` is a test hook that can fail the write
    /// between the temp file and the link, as a crash there would. Returns the new id.
    @discardableResult
    public func append(_ r: RegressRecord, beforeLink: () throws -> Void = {}) throws -> String {
        try FileManager.default.createDirectory(at: recordsDir, withIntermediateDirectories: true)
        let stamp = Self.compactStamp(r.date)
        var base = "\(stamp)-\(r.git.short)" + (r.git.dirty ? "-dirty" : "")
        base = String(base.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "+" ? $0 : "_" })
        let data = try r.encoded()
        let tmp = recordsDir.appendingPathComponent(".tmp-\(getpid())-\(UUID().uuidString).json")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else { throw RegressError("cannot write in '\(recordsDir.path)': \(String(cString: strerror(errno)))") }
        var ok = data.withUnsafeBytes { p -> Bool in
            var off = 0
            while off < p.count {
                let n = write(fd, p.baseAddress! + off, p.count - off)
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        let writeErrno = errno
        close(fd)
        defer { unlink(tmp.path) }
        guard ok else { throw RegressError("cannot write '\(tmp.path)': \(String(cString: strerror(writeErrno)))") }
        try beforeLink()
        var id = base
        for k in 1...1000 {
            if link(tmp.path, recordsDir.appendingPathComponent(id + ".json").path) == 0 { break }
            guard errno == EEXIST, k < 1000 else { throw RegressError("cannot add record '\(id).json' to '\(recordsDir.path)': \(String(cString: strerror(errno)))") }
            id = "\(base)-\(k + 1)"
        }
        let dfd = open(recordsDir.path, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
        return id
    }

    /// 2026-11-30T00:22:14Z -> 20261130T002214Z
    static func compactStamp(_ iso: String) -> String { iso.filter { $0 != "-" && $0 != ":" }.replacingOccurrences(of: ".", with: "") }

    static func describe(_ e: Error) -> String {
        switch e {
        case DecodingError.keyNotFound(let k, _): return "missing key '\(k.stringValue)'"
        case DecodingError.typeMismatch(_, let c): return "wrong type at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.valueNotFound(_, let c): return "missing value at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let c): return "malformed JSON" + (c.codingPath.isEmpty ? "" : " at \(c.codingPath.map(\.stringValue).joined(separator: "."))")
        default: return "\(e)"
        }
    }
}

// MARK: - provenance

public enum RegressProvenance {
    /// git rev-parse HEAD and whether tracked files differ from it, run in `dir` (Process:
    /// posix_spawn underneath); "unknown" outside a repository or without git.
    public static func git(in dir: String = FileManager.default.currentDirectoryPath) -> RegressGit {
        guard let head = run(["git", "-C", dir, "rev-parse", "HEAD"]), head.status == 0 else {
            return RegressGit(commit: "unknown", dirty: false)
        }
        let commit = head.out.trimmingCharacters(in: .whitespacesAndNewlines)
        let st = run(["git", "-C", dir, "status", "--porcelain", "--untracked-files=no"])
        let dirty = st.map { $0.status != 0 || !$0.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty } ?? false
        return RegressGit(commit: commit.isEmpty ? "unknown" : commit, dirty: dirty)
    }

    public static func machine() -> RegressMachine {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let cpu = info.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" } ?? "unknown"
        return RegressMachine(hostname: ProcessInfo.processInfo.hostName, cpu: cpu,
                              cores: ProcessInfo.processInfo.activeProcessorCount,
                              openblasCore: BLASInfo.coreName, threads: FastThreads.workers, swift: compilerVersion)
    }

    static var compilerVersion: String {
        #if compiler(>=6.4)
        return ">= 6.4"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #elseif compiler(>=6.1)
        return "6.1"
        #else
        return "< 6.1"
        #endif
    }

    public static func nowISO() -> String {
        let f = ISO8601DateFormatter()
        f.timeZone = TimeZone(identifier: "UTC")
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }

    static func run(_ args: [String]) -> (status: Int32, out: String)? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        do { try p.run() } catch { return nil }
        let d = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }
}
