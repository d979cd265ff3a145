import Foundation
import Testing
import TestSupport
import SDDiTCore
import SDDiTRegress

/// Thresholds for tests: the error rules as shipped, timings judged so leniently that the
/// machine's noise cannot fail a test (timing checks have their own unit test below).
func lenientThresholds() -> RegressThresholds {
    var t = RegressThresholds.defaults
    t.timing.percent = 1e6
    t.notes.append("test: timings effectively not judged")
    return t
}

func metric(_ v: Double, tol: Double = 1e-4, pass: Bool = true, order: Int = 0) -> RegressMetric {
    RegressMetric(value: v, maxAbs: v, tol: tol, pass: pass, order: order)
}

func record(_ metrics: [String: RegressMetric], date: String = "2026-01-01T00:00:00Z", commit: String = "abcdef0123456789",
            cpu: String = "cpu") -> RegressRecord {
    RegressRecord(battery: "quick", date: date, durationS: 1, git: RegressGit(commit: commit, dirty: false),
                  machine: RegressMachine(hostname: "h", cpu: cpu, cores: 2, openblasCore: "X", threads: 2, swift: "6.3"),
                  settings: [:], notes: [], metrics: metrics)
}

@Suite("oracle regress")
struct RegressTests {
    /// The acceptance test: record twice on an unchanged tree, check passes; record once
    /// with a deliberately perturbed fast-path kernel (the SDDIT_ORACLE_PERTURB hook), check fails
    /// and names tensors downstream of that kernel.
    @Test func recordCheckAndPerturbedKernel() throws {
        let dir = tempDir()
        let store = dir.appendingPathComponent("store").path
        try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
        try lenientThresholds().encoded().write(to: URL(fileURLWithPath: store + "/thresholds.json"))
        let rec = ["regress", "record", "--blas-core", "keep", "--battery", "quick", "--store", store, "--reps", "2"]
        var times: [Double] = []
        for _ in 0..<2 {
            let t0 = Date()
            let (c, out, err) = try runOracle(rec, env: [:])
            times.append(Date().timeIntervalSince(t0))
            #expect(c == 0, "record: exit \(c)\n\(out)\(err)")
            #expect(out.contains("recorded "), "record output: \(out)")
        }
        let ids = try RegressStore(store).ids()
        #expect(ids.count == 2, "records: \(ids)")
        // errors and gradient checks are bit-identical run to run (only timings move)
        let (r0, r1) = (try RegressStore(store).load(ids[0]), try RegressStore(store).load(ids[1]))
        let moved = r0.metrics.filter { !$0.key.hasPrefix("timing/") && r1.metrics[$0.key] != $0.value }.map(\.key).sorted()
        #expect(moved.isEmpty, "not reproducible run to run: \(moved.prefix(5))")
        #expect(r0.metrics.count == r1.metrics.count && r0.metrics.count > 2500, "\(r0.metrics.count) metrics")
        let (c1, out1, err1) = try runOracle(["regress", "check", "--store", store], env: [:])
        #expect(c1 == 0, "check on an unchanged tree: exit \(c1)\n\(out1)\(err1)")
        #expect(out1.contains(": no regression"), "check: \(out1)")

        let (c2, out2, err2) = try runOracle(rec, env: ["SDDIT_ORACLE_PERTURB": "gelu:1e-3"])
        #expect(c2 == 0, "perturbed record: exit \(c2)\n\(out2)\(err2)")
        let (c3, out3, _) = try runOracle(["regress", "check", "--store", store], env: [:])
        #expect(c3 == 1, "check after a perturbed kernel: exit \(c3)\n\(out3)")
        // GELU is the first nonlinearity of every block's MLP: the first encoder block's output
        // is the first tensor downstream of it in forward order
        // (the default output lists the 8 worst of a group, whose order depends on the kernel
        // set; --verbose lists every one)
        let (_, out3v, _) = try runOracle(["regress", "check", "--store", store, "--verbose"], env: [:])
        #expect(out3v.contains("REGRESSED error/tiny/fast/activations/student.enc.block.0: max rel"), "check does not name the tensor:\n\(out3v.prefix(3000))")
        #expect(out3.contains("error tiny/fast activations: "), "no group summary for tiny/fast activations:\n\(out3.prefix(3000))")
        #expect(out3.contains("first activations/student.enc.block.0"), "first regressed tensor in forward order not named:\n\(out3.prefix(3000))")
        #expect(out3.contains("note: the latest run was made with a perturbed kernel"), "the perturbed run is not noted:\n\(out3.prefix(3000))")
        #expect(out3.split(separator: "\n").last?.hasSuffix(": REGRESSION") == true, "the last line is not the REGRESSION verdict:\n\(out3.suffix(500))")
        // the float64 reference and its fixtures did not move
        #expect(!out3.contains("vs ref:"), "a reference metric regressed:\n\(out3.prefix(3000))")
        #expect(!out3.contains("REGRESSED gradcheck/"), "gradient checks regressed:\n\(out3.prefix(3000))")
        // against the first record as a named baseline too
        let (c4, out4, _) = try runOracle(["regress", "check", "--store", store, "--baseline", ids[0]], env: [:])
        #expect(c4 == 1 && out4.contains("student.enc.block.0"), "against the first record: exit \(c4), student.enc.block.0 not named:\n\(out4.prefix(3000))")
        // the same baseline through latest~2, and the unperturbed pair still passes via --latest
        let (c5, out5, _) = try runOracle(["regress", "check", "--store", store, "--baseline", "latest~2", "--latest", "latest~1"], env: [:])
        #expect(c5 == 0, "unperturbed pair: \(out5)")
        Report.write("regress-acceptance.txt", [String(format: "quick battery record: %.1f s, %.1f s (--reps 2)", times[0], times[1])]
                    + out3.split(separator: "\n").prefix(12).map(String.init))
    }

    @Test func malformedPerturbationIsOneLine() throws {
        let store = tempDir().appendingPathComponent("s").path
        let (c, _, err) = try runOracle(["regress", "record", "--blas-core", "keep", "--store", store], env: ["SDDIT_ORACLE_PERTURB": "softmax:x"])
        #expect(c == 2, "exit \(c)")
        #expect(err.split(separator: "\n").count == 1 && err.contains("SDDIT_ORACLE_PERTURB"), "stderr: \(err)")
        #expect(!FileManager.default.fileExists(atPath: store + "/records"), "a failed run created records")
    }

    @Test func badInputIsOneClearLine() throws {
        let dir = tempDir()
        let empty = dir.appendingPathComponent("empty").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let one = dir.appendingPathComponent("one")
        try RegressStore(one.path).append(record(["error/tiny/fast/losses/total": metric(1e-7)]))
        let corrupt = dir.appendingPathComponent("corrupt")
        try RegressStore(corrupt.path).append(record(["error/tiny/fast/losses/total": metric(1e-7)]))
        try RegressStore(corrupt.path).append(record(["error/tiny/fast/losses/total": metric(1e-7)], date: "2026-01-02T00:00:00Z"))
        let victim = try RegressStore(corrupt.path).ids().last!
        try Data("{\"battery\": ".utf8).write(to: corrupt.appendingPathComponent("records/\(victim).json"))
        let cases: [([String], String)] = [
            (["regress", "check", "--store", "/nonexistent/store"], "no regression store"),
            (["regress", "check", "--store", empty], "has no records"),
            (["regress", "check", "--store", one.path], "no record before"),
            (["regress", "check", "--store", one.path, "--baseline", "nosuchrecord"], "no record 'nosuchrecord'"),
            (["regress", "check", "--store", corrupt.path], "not a valid"),
            (["regress", "report", "--store", "/nonexistent/store", "--out", dir.appendingPathComponent("r").path], "no regression store"),
            (["regress", "check", "--store", one.path, "--thresholds", "/nonexistent/t.json"], "thresholds file"),
        ]
        for (args, needle) in cases {
            let (c, out, err) = try runOracle(args, env: [:])
            #expect(c == 2, "\(args): exit \(c)\n\(out)\(err)")
            let lines = err.split(separator: "\n")
            #expect(lines.count == 1 && err.contains(needle), "\(args): stderr should be one line with '\(needle)': \(err)")
        }
        // a store that cannot be written: refused before the battery runs, nothing created
        let file = dir.appendingPathComponent("plain-file")
        try Data("x".utf8).write(to: file)
        for store in [file.path, file.path + "/sub"] {
            let t0 = Date()
            let (c, out, err) = try runOracle(["regress", "record", "--blas-core", "keep", "--store", store], env: [:])
            #expect(c == 2 && err.split(separator: "\n").count == 1 && err.contains("is a file, not a directory"), "store \(store): exit \(c)\n\(out)\(err)")
            #expect(Date().timeIntervalSince(t0) < 5, "the battery ran before the store was checked")
            #expect(try Data(contentsOf: file) == Data("x".utf8), "a refused record changed the file standing where the store should be")
        }
        let (c, _, err) = try runOracle(["regress", "record", "--blas-core", "keep", "--battery", "huge", "--store", empty], env: [:])
        #expect(c != 0 && err.contains("unknown battery 'huge'"), "bad battery: \(c) \(err)")
    }

    /// A write that fails between the temporary file and the link leaves the records as they were;
    /// a stray temporary file is ignored; an existing record is never replaced.
    @Test func appendsAreAtomic() throws {
        let dir = tempDir().appendingPathComponent("store")
        let store = RegressStore(dir.path)
        let r = record(["error/tiny/fast/losses/total": metric(1e-7), "timing/tiny/fast/x_ms": .timing([1, 2, 3])])
        let first = try store.append(r)
        let before = try Data(contentsOf: store.recordsDir.appendingPathComponent(first + ".json"))
        struct Crash: Error {}
        #expect(throws: Crash.self, "a failure before the link does not reach the caller") { try store.append(r, beforeLink: { throw Crash() }) }
        #expect(try store.ids() == [first], "a record that failed before its link is in the store")
        let names = try FileManager.default.contentsOfDirectory(atPath: store.recordsDir.path)
        #expect(names == [first + ".json"], "left behind: \(names)")
        // a temporary file of a run killed mid-write is skipped by readers
        try Data("{ \"battery\": \"qu".utf8).write(to: store.recordsDir.appendingPathComponent(".tmp-999-dead.json"))
        #expect(try store.ids() == [first], "a dot-file left by a killed run is read as a record")
        // same second, same commit: a second record gets a new name, the first is untouched
        let second = try store.append(r)
        #expect(second != first && second.hasPrefix(first), "a second record in the same second did not get a new name after the first's: \(second)")
        #expect(try Data(contentsOf: store.recordsDir.appendingPathComponent(first + ".json")) == before, "the second record changed the first")
        #expect(try store.ids() == [first, second], "the store does not list both records in order")
        let back = try store.load(first)
        #expect(back.metrics == r.metrics && back.id == first, "the first record does not load back as written")
        // resolve: latest, latest~1, unique prefix, commit prefix
        let ids = try store.ids()
        #expect(try store.resolve("latest", in: ids) == second, "latest does not resolve to the second record")
        #expect(try store.resolve("latest~1", in: ids) == first, "latest~1 does not resolve to the first record")
        #expect(try store.resolve("abcdef0", in: ids) == second, "a commit prefix does not resolve to the latest record of that commit")
        #expect(throws: RegressError.self, "latest~5 of two records resolves") { try store.resolve("latest~5", in: ids) }
    }

    @Test func recordJSONIsValidDiffableAndRoundTrips() throws {
        let m: [String: RegressMetric] = ["error/tiny/fast/activations/student.c": metric(1.23456789e-7, order: 3),
                                          "error/tiny/fast/losses/total": RegressMetric(value: .infinity, maxAbs: .infinity, tol: 1e-4, pass: false),
                                          "timing/tiny/fast/train_step_ms": .timing([3.1, 2.9, 3.0, 3.4])]
        let r = record(m)
        let text = String(decoding: try r.encoded(), as: UTF8.self)
        #expect(text.contains("\n    \"error/tiny/fast/activations/student.c\": {"), "one line per metric:\n\(text)")
        #expect(!text.contains("\"id\""), "the id is the file name, not stored")
        let back = try RegressRecord.decode(Data(text.utf8))
        #expect(back.metrics == m, "the metrics do not round-trip through the record's text")
        #expect(back.metrics["timing/tiny/fast/train_step_ms"]!.value == 3.05, "a timing's median does not round-trip")
        #expect(back.metrics["timing/tiny/fast/train_step_ms"]!.spread == 0.1483, "a timing's spread is not 1.4826 x its median absolute deviation")   // 1.4826 x MAD 0.1
        #expect(try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any], "the record is not a JSON object")
    }

    @Test func thresholdsJudgeErrorsAndTimings() throws {
        let t = RegressThresholds.defaults
        let base = record([
            "error/tiny/fast/activations/a": metric(1e-7, order: 0),
            "error/tiny/fast/activations/b": metric(1e-7, order: 1),
            "error/fixture/f/ref/losses/total": metric(1e-16, tol: 1e-9),
            "error/tiny/fast/activations/c": metric(5e-5, order: 2),
            "gradcheck/tiny/mask0.5/w": metric(1e-11, tol: 1e-7),
            "timing/tiny/fast/step_ms": RegressMetric(value: 10, spread: 0.5, runs: [9.5, 10, 10.5]),
            "timing/tiny/fast/den_ms": RegressMetric(value: 10, spread: 0.5, runs: [9.5, 10, 10.5]),
        ])
        var now = base
        now.metrics["error/tiny/fast/activations/a"] = metric(3.9e-7)                      // within 4x
        now.metrics["error/tiny/fast/activations/b"] = metric(4.1e-7, order: 1)             // past 4x
        now.metrics["error/fixture/f/ref/losses/total"] = metric(5e-16, tol: 1e-9)          // 5x, but noise under the floor
        now.metrics["error/tiny/fast/activations/c"] = metric(1.1e-4, pass: false, order: 2) // passed -> fails
        now.metrics["gradcheck/tiny/mask0.5/w"] = metric(2e-9, tol: 1e-7)                  // past 4x and the floor 1e-9
        now.metrics["timing/tiny/fast/step_ms"] = RegressMetric(value: 13, spread: 0.5, runs: [12.6, 13, 13.4])   // +30%: under the limit 10 x 1.25 + 2 x (0.5 + 0.5) + 0.05 = 14.55
        now.metrics["timing/tiny/fast/den_ms"] = RegressMetric(value: 15, spread: 0.5, runs: [14.5, 15, 15.5])    // +50%: over 14.55, fastest 14.5 > 12.5
        let res = RegressCheck.compare(baseline: base, latest: now, thresholds: t)
        let bad = Set(res.regressions.map(\.metric))
        #expect(bad == ["error/tiny/fast/activations/b", "error/tiny/fast/activations/c", "gradcheck/tiny/mask0.5/w", "timing/tiny/fast/den_ms"], "other metrics regressed than the two errors, the gradcheck and den_ms: \(bad)")
        let lines = res.lines()
        #expect(lines.contains { $0.hasPrefix("REGRESSED error/tiny/fast/activations/b: max rel 1e-07 -> 4.1e-07 (x4.1)") }, "no REGRESSED line for activations/b with both values and the ratio: \(lines)")
        #expect(lines.contains { $0.contains("error tiny/fast activations: 2 of 3 regressed; first activations/b") }, "no group line for tiny/fast activations naming the first regressed: \(lines)")
        // another machine: timings are not compared
        var other = now
        other.machine.cpu = "another cpu"
        let r2 = RegressCheck.compare(baseline: base, latest: other, thresholds: t)
        #expect(r2.timingsSkipped != nil && !r2.regressions.contains { $0.metric.hasPrefix("timing/") }, "another machine's timings were compared")
        // a metric the same battery stopped producing
        var gone = base
        gone.metrics["error/tiny/fast/activations/a"] = nil
        #expect(RegressCheck.compare(baseline: base, latest: gone, thresholds: t).regressions.map(\.verdict) == [.missing], "a metric the battery no longer produces is not reported missing")
    }

    /// After-step parameters carry the diff's lr allowance (SPEC hazard 2): a change of BLAS
    /// kernels flipped AdamW's first-step sign on noise gradients and grew such a max rel error
    /// x124 (measured, fp16, Prescott -> SkylakeX kernels) while its max abs stayed within 2 lr.
    /// Within the allowance growth is not a regression; beyond it, or outside the tolerance, it is.
    @Test func afterStepNoiseWithinTheLrAllowance() throws {
        let key = "error/tiny/fast-fp16/after_step/params/t_embedder.mlp.0.weight"
        var m0 = metric(2.5e-6, tol: 9.77e-3); m0.maxAbs = 1.24e-6; m0.noiseAbs = 2e-4
        let base = record([key: m0])
        var flipped = base, beyond = base
        var m1 = metric(3.08e-4, tol: 9.77e-3); m1.maxAbs = 1.96e-4; m1.noiseAbs = 2e-4
        flipped.metrics[key] = m1
        var m2 = metric(3.08e-3, tol: 9.77e-3); m2.maxAbs = 2.5e-3; m2.noiseAbs = 2e-4
        beyond.metrics[key] = m2
        let t = RegressThresholds.defaults
        #expect(RegressCheck.compare(baseline: base, latest: flipped, thresholds: t).regressions.isEmpty, "an after-step error grown within the lr allowance counts as a regression")
        #expect(RegressCheck.compare(baseline: base, latest: beyond, thresholds: t).regressions.map(\.metric) == [key], "an after-step error grown beyond the lr allowance is not the one regression")
        // the after-step rule's metric (tol 1: the use of an Adam-step interval) counts only
        // when its verdict turns to FAIL
        var i0 = metric(0.01, tol: 1), i1 = metric(0.6, tol: 1), i2 = metric(1.4, tol: 1, pass: false)
        i0.maxAbs = 1e-4; i1.maxAbs = 1e-4; i2.maxAbs = 1e-4
        var grown = record([key: i0]), failing = grown
        grown.metrics[key] = i1; failing.metrics[key] = i2
        #expect(RegressCheck.compare(baseline: record([key: i0]), latest: grown, thresholds: t).regressions.isEmpty, "an after-step interval use that grew but passes counts as a regression")
        #expect(RegressCheck.compare(baseline: record([key: i0]), latest: failing, thresholds: t).regressions.map(\.metric) == [key], "an after-step interval use turned FAIL is not the one regression")
    }

    /// Across CPUs or OpenBLAS kernel sets the fast path's errors differ by construction: only
    /// their verdict counts there; the reference's errors are still compared.
    @Test func otherKernelsJudgeFastErrorsByVerdict() throws {
        let fast = "error/fixture/public_train_tiny/fast/losses/dis_cls", ref = "error/fixture/public_train_tiny/ref/losses/dis_cls"
        let base = record([fast: metric(1e-8), ref: metric(2e-12, tol: 1e-9)], cpu: "Xeon")
        var other = record([fast: metric(2e-7), ref: metric(5e-11, tol: 1e-9)], cpu: "EPYC")
        let res = RegressCheck.compare(baseline: base, latest: other, thresholds: RegressThresholds.defaults)
        #expect(res.regressions.map(\.metric) == [ref], "on other kernels a fast error that grew was counted, or the reference's was not: \(res.regressions.map(\.metric))")
        other.metrics[fast] = metric(2e-4, pass: false)
        let res2 = RegressCheck.compare(baseline: base, latest: other, thresholds: RegressThresholds.defaults)
        #expect(Set(res2.regressions.map(\.metric)) == [fast, ref], "on other kernels a fast error turned FAIL, or the reference's growth, is not reported: \(res2.regressions.map(\.metric))")
    }

    @Test func reportIsSelfContained() throws {
        let recs = (0..<3).map { i in
            var r = record(["error/tiny/fast/activations/student.c": metric(1e-7 * Double(i + 1), order: 0),
                            "error/tiny/fast-bf16/activations/student.c": metric(1e-3, tol: 0.078, order: 0),
                            "error/tiny/fast/activations/student.D": metric(0, order: 1),
                            "error/fixture/public_train_tiny/ref/losses/total": metric(1e-16, tol: 1e-9),
                            "gradcheck/tiny/mask0.5/all-parameters": metric(1e-12, tol: 1e-7),
                            "timing/tiny/fast/train_step_ms": .timing([3, 3.2, 2.9])], date: "2026-01-0\(i + 1)T00:00:00Z")
            r.id = "2026010\(i + 1)T000000Z-abcdef0"
            return r
        }
        let html = RegressReport.html(recs, thresholds: .defaults)
        #expect(html.hasPrefix("<!doctype html>"), "the report is not an HTML document")
        #expect(html.components(separatedBy: "<svg").count - 1 >= 5, "charts missing")
        for banned in ["<script", "src=", "<link", "@import", "url(", "href="] { #expect(!html.contains(banned), "report contains \(banned)") }
        #expect(html.contains("Per-layer error profile") && html.contains("student.c"), "the report has no per-layer error profile naming student.c")
    }
}
