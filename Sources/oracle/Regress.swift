import ArgumentParser
import Foundation
import SDDiTCore
import SDDiTExchange
import SDDiTRegress

struct Regress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Track errors and timings over the project's history: record a run, check it against a baseline, report.",
        discussion: """
        The history lives in the repository: one record per run in regress/records/<UTC time>-<commit>.json (git commit and dirty flag, date, machine, every tensor's max error, every timing), added atomically and never modified; regress/thresholds.json says what counts as a regression. See docs/DECISIONS.md, items 18-23.

          oracle regress record                     # quick battery, 10-20 s
          oracle regress record --battery standard  # + SD-DiT-S/2, about 1.5 min
          oracle regress check                      # latest vs the one before
          oracle regress check --baseline latest~3  # or an id, a prefix, a commit
          oracle regress report --out regress-report  # HTML + inline SVG

        check exits 0 without a regression, 1 with one (each listed with both values), 2 on bad input (one line on stderr).
        """,
        subcommands: [Record.self, Check.self, Report.self])

    struct StoreOption: ParsableArguments {
        @Option(help: "The history store (a directory in the repository).") var store: String = "regress"
    }

    struct Record: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a battery and append one record to the store.",
            discussion: """
            quick: the tiny config; fast, fast-fp16, fast-bf16, fast-fp16-pure
            and fast-bf16-pure against the float64 reference (seeded setup:
            a training step and a 5-step sampler, every dataset); every
            fixtures/*.h5 rerun by ref and by fast; directional gradient
            checks of the reference; tiny timings (median of --reps).
            standard: quick + SD-DiT-S/2 at batch 1, every fast mode against
            the reference (the float64 S/2 batch-1 step takes about 5 s),
            and S/2 batch-8 timings as oracle bench runs them.
            """)
        @OptionGroup var s: StoreOption
        @Option(help: "quick or standard.") var battery: String = "quick"
        @Option(help: "Directory of the fixtures (*.h5) to rerun.") var fixtures: String = "fixtures"
        @Option(help: "Timed repeats of each tiny timing.") var reps: Int = 7
        @Option(name: .customLong("s2-reps"), help: "Timed repeats of each S/2 timing (standard).") var s2Reps: Int = 3
        @Option(help: "OpenBLAS and fast-path threads.") var threads: Int = 2
        @OptionGroup var blas: BLASEnvironment
        @Flag(help: "Run the battery and print the record without adding it to the store.") var dryRun = false

        func validate() throws {
            if !RegressBatteryOptions.batteries.contains(battery) {
                throw ValidationError("unknown battery '\(battery)'; expected one of: \(RegressBatteryOptions.batteries.joined(separator: ", "))")
            }
            if reps < 1 || s2Reps < 1 { throw ValidationError("--reps and --s2-reps must be at least 1") }
            if threads < 1 { throw ValidationError("--threads must be at least 1, found \(threads)") }
        }

        func run() throws {
            try blas.prepare()   // the same OpenBLAS settings as `oracle bench`, so its timings are comparable
            try reportingErrors {
                var o = RegressBatteryOptions()
                o.battery = battery; o.fixturesDir = fixtures; o.reps = reps; o.s2Reps = s2Reps; o.threads = threads
                let store = RegressStore(s.store)
                // fail on an unusable store before spending minutes on the battery
                if !dryRun { try store.checkWritable() }
                let date = RegressProvenance.nowISO()
                let git = RegressProvenance.git()
                print("oracle regress record: battery \(battery), commit \(git.short)\(git.dirty ? " (dirty)" : ""), \(date)")
                for line in BLASEnvironment.notes { print("note: " + line) }
                fflush(nil)
                let t0 = Date()
                let r = try RegressBattery.run(o) { print($0); fflush(nil) }
                let rec = RegressRecord(battery: battery, date: date, durationS: round4(Date().timeIntervalSince(t0)), git: git,
                                        machine: RegressProvenance.machine(), settings: r.settings, notes: r.notes, metrics: r.metrics)
                var kinds: [String: Int] = [:]
                for k in r.metrics.keys { kinds[RegressRecord.kind(k), default: 0] += 1 }
                print("metrics: " + kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                      + String(format: " (%d in all); %.1f s", r.metrics.count, rec.durationS))
                for n in r.notes { print("note: " + n) }
                if dryRun {
                    print(String(decoding: try rec.encoded(), as: UTF8.self))
                    return
                }
                if !FileManager.default.fileExists(atPath: store.thresholdsURL.path) {
                    try FileManager.default.createDirectory(at: store.root, withIntermediateDirectories: true)
                    try RegressThresholds.defaults.encoded().write(to: store.thresholdsURL, options: .atomic)
                    print("wrote the default thresholds to \(store.thresholdsURL.path)")
                }
                let id = try store.append(rec)
                print("recorded \(store.recordsDir.appendingPathComponent(id + ".json").path)")
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compare the latest record (or --latest) with a baseline under the thresholds; exit 1 on a regression.",
            discussion: """
            Baseline: the record before the latest, or --baseline REF: an id
            (file name stem), a unique prefix of one, latest~N, or a commit
            prefix (its newest record). Errors regress past a growth factor
            above a floor; timings past a percentage plus the measured spread
            of the repeats (same machine only). See regress/thresholds.json.
            """)
        @OptionGroup var s: StoreOption
        @Option(help: "The baseline record (default: the one before the latest).") var baseline: String?
        @Option(help: "The record to check (default: the newest).") var latest: String = "latest"
        @Option(help: "A thresholds file (default: <store>/thresholds.json, else the built-in defaults).") var thresholds: String?
        @Flag(help: "Also list improvements.") var verbose = false

        func run() throws {
            let res = try reportingErrors { () -> RegressCheckResult in
                let store = RegressStore(s.store)
                let ids = try store.ids()
                var t: RegressThresholds
                if let p = thresholds {
                    do { t = try JSONDecoder().decode(RegressThresholds.self, from: Data(contentsOf: URL(fileURLWithPath: p))) } catch {
                        throw RegressError("thresholds file '\(p)': \(error is DecodingError ? "not a valid thresholds file" : "cannot read it")")
                    }
                } else {
                    t = try RegressThresholds.load(store).0
                }
                guard !ids.isEmpty else { throw RegressError("the store '\(s.store)' has no records (run `oracle regress record` first)") }
                let lid = try store.resolve(latest, in: ids)
                let bid: String
                if let b = baseline { bid = try store.resolve(b, in: ids) } else {
                    guard let i = ids.firstIndex(of: lid), i > 0 else {
                        throw RegressError("no record before \(lid) to compare with (record another run, or give --baseline)")
                    }
                    bid = ids[i - 1]
                }
                if bid == lid { throw RegressError("the baseline and the latest are the same record (\(lid))") }
                return RegressCheck.compare(baseline: try store.load(bid), latest: try store.load(lid), thresholds: t)
            }
            res.lines(verbose: verbose).forEach { print($0) }
            if !res.passed { throw ExitCode(1) }
        }
    }

    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an HTML page (inline SVG, no network) of the history and the latest run's per-layer errors.")
        @OptionGroup var s: StoreOption
        @Option(help: "Output directory (index.html is written there).") var out: String
        @Option(help: "Show at most this many of the latest records.") var last: Int = 50

        func run() throws {
            try reportingErrors {
                let store = RegressStore(s.store)
                let ids = try store.ids()
                guard !ids.isEmpty else { throw RegressError("the store '\(s.store)' has no records (run `oracle regress record` first)") }
                let recs = try ids.suffix(max(last, 1)).map(store.load)
                let t = (try? RegressThresholds.load(store).0) ?? .defaults
                let html = RegressReport.html(recs, thresholds: t)
                let dir = URL(fileURLWithPath: out)
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                let f = dir.appendingPathComponent("index.html")
                try Data(html.utf8).write(to: f, options: .atomic)
                print("wrote \(f.path) (\(recs.count) records, \(html.utf8.count / 1024) KiB)")
            }
        }
    }
}
