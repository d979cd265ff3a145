import Foundation
import SDDiTCore
import SDDiTExchange

// The sides of a diff: what each side is (a file, a backend), the setup both run, and how
// their results reach the comparison (held, read on demand, or streamed by the reference).

/// One side of a comparison: a backend by name, or an exchange file.
public enum Side: Sendable, CustomStringConvertible {
    case backend(Backend)
    case file(String)

    public static func parse(_ s: String) -> Side {
        if let b = Backend(rawValue: s) { return .backend(b) }
        return .file(s)
    }
    public var description: String {
        switch self {
        case .backend(let b): return b.rawValue
        case .file(let p): return (p as NSString).lastPathComponent
        }
    }
}

/// What a diff starts from: the two sides as named, their files read (results on demand),
/// the setup both run (a file's, else the seed's, made once when first asked for) and its config.
final class DiffInputs {
    let a: Side, b: Side
    let fileA: ExchangeFile?, fileB: ExchangeFile?
    let backendA: Backend?, backendB: Backend?
    let options: DiffOptions
    private var made: RunSetup? = nil

    init(a: Side, b: Side, options: DiffOptions) throws {
        self.a = a; self.b = b; self.options = options
        if case .file(let p) = a { fileA = try ExchangeFile.read(p, resultsOnDemand: true) } else { fileA = nil }
        if case .file(let p) = b { fileB = try ExchangeFile.read(p, resultsOnDemand: true) } else { fileB = nil }
        if case .backend(let be) = a { backendA = be } else { backendA = nil }
        if case .backend(let be) = b { backendB = be } else { backendB = nil }
    }

    /// The file whose setup the backends rerun (a's of two files); nil: a seeded setup.
    var setupFile: ExchangeFile? { fileA ?? fileB }
    /// One file against a backend: that file; nil for two files or two backends.
    var loneFile: ExchangeFile? { (fileA == nil) != (fileB == nil) ? setupFile : nil }
    var config: ModelConfig { setupFile?.config ?? options.config }

    /// The setup both sides run: the file's, else one from the seed.
    func setup() throws -> RunSetup {
        if let s = made { return s }
        let o = options
        let s = try setupFile?.runSetup()
            ?? SeededSetup.make(o.config, seed: o.seed, batch: o.batch, maskRatio: o.maskRatio ?? o.config.maskRatio,
                                sampleSteps: o.sampleSteps, cfgScale: o.cfgScale)
        made = s
        return s
    }

    /// The config values the file leaves out that the rules it records rely on: said, never
    /// taken silently.
    var defaultNotes: [String] {
        guard let f = setupFile else { return [] }
        var notes: [String] = []
        for k in f.defaultedConfigKeys {
            let user = k == "rho" ? (f.has(group: "sampler") ? "the sampler's schedule" : nil)
                : k == "mask_ratio" ? nil : (f.has(group: "after_step") ? "the after-step rules" : nil)
            guard let user else { continue }
            notes.append(String(format: "note: the file's config has no '%@'; %@ assume %@ = %g (the oracle's default): set it if the run used another",
                                k, user, k, config.value(ofOptionalKey: k) ?? .nan))
        }
        return notes
    }
}

/// One side of a diff as the engine reads it: a file (its results read when asked for), a
/// backend's results held whole, or the reference streaming its results (`Backend.stream`),
/// which the engine compares as they come and keeps none of, beyond the gradient and
/// updated student tensor of the key being judged. Memory is then the reference's step plus
/// a tensor or two of the other side: a diff at XL/2 fits where two whole runs would not.
final class DiffSide {
    let file: ExchangeFile?
    var held: [String: NamedTensor]?
    /// Paths this side has, all of them (`full`) and those it is compared on (`compared`).
    var full: Set<String> = [], compared: Set<String> = []
    var hasGradients = false
    /// The streamed side's gradient and updated student tensor of the current key.
    var recent: [String: NamedTensor] = [:]
    /// A file's fixed tables (params/pos_embed, ...) are judged in the precision of its
    /// results: a float32 model's tables stored as float64 (as tools/sddit_h5.py writes a
    /// state_dict) hold float32 values.
    var tablePrecision: Precision? = nil

    init(file: ExchangeFile) {
        self.file = file
        full = Set(file.index.keys)
        compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
        tablePrecision = file.index.filter { !ExchangeFile.isSetup($0.key) && !$0.key.hasPrefix("params/") }.map(\.value.precision).min()
    }
    init(held d: [String: NamedTensor]) {
        file = nil; held = d
        full = Set(d.keys); compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
    }
    init(streamedWithGradients g: Bool) { file = nil; hasGradients = g }
    /// The calibration run's results, as a side (the file against its mode's own backend).
    init(run: CalibrationRun) throws {
        file = nil; self.run = run
        full = Set(run.paths); compared = full
        hasGradients = full.contains { $0.hasPrefix("grads/") }
    }
    var run: CalibrationRun? = nil
    /// float64 datasets of a file that hold float32 values only (`forComparison` judges them as float32).
    var narrowed: [String] = []

    /// Any of the side's datasets, as it recorded it.
    func get(_ p: String) throws -> NamedTensor? {
        if let r = recent[p] { return r }
        if let held { return held[p] }
        if let run { return try run.tensor(p) }
        return try file?.dataset(p)
    }
    /// A dataset as it is compared (nil: not compared on this side).
    func forComparison(_ p: String) throws -> NamedTensor? {
        guard compared.contains(p), var d = try get(p) else { return nil }
        if p.hasPrefix("params/"), let tp = tablePrecision { d.precision = min(d.precision, tp) }
        // a float32 run stored as float64 (hooks that call .double()): judged as float32
        if file != nil, d.precision == .float64, !ExchangeFile.isSetup(p), !p.hasPrefix("params/"), p != "sampler/sigmas",
           Precision.float32.holdsExactly(d.values) {
            d.precision = .float32
            if !narrowed.contains(p) { narrowed.append(p) }
        }
        return d
    }
    /// Keeps a streamed gradient or updated student tensor while its key is judged.
    func remember(_ p: String, _ d: NamedTensor) {
        let key: Substring
        if p.hasPrefix("grads/") { key = p.dropFirst(6) } else if p.hasPrefix("after_step/params/") { key = p.dropFirst(18) } else { return }
        recent = recent.filter { $0.key.hasSuffix("/" + key) }
        recent[p] = d
    }
}

/// The two sides of a diff and how their results are obtained. A reference backend (float64
/// or Float80; b's of two) streams, and what it hands over is compared at once with the other
/// side; a file judged against a fast mode has the reference stream beside both sides, as the
/// truth. The calibration run (the fast path in the file's mode on its setup) is made first,
/// before the reference streams; against the mode's own backend it is that side.
final class DiffSides {
    let a: DiffSide, b: DiffSide
    let inputs: DiffInputs
    let judging: Judging
    /// The backend that streams its results (nil: none does).
    let streamed: Backend?
    /// The reference streams on side a (b is no reference).
    let streamsA: Bool
    /// The reference streams beside two sides, as the truth both are compared against.
    let truthBeside: Bool
    /// The side the stream is (nil: none, or the truth beside both).
    let driver: DiffSide?
    /// The fast path in the file's mode on its setup (nil: no file judged in a mode, or it could not run).
    let calibrationRun: CalibrationRun?
    /// The groups the file records, when a backend runs on its setup: the backend's other
    /// outputs were not asked for (nil: two files, or two backends).
    let recordedGroups: Set<String>?
    /// The calibration could not run (memory), and what that means, said.
    private(set) var uncalibrated = false
    private(set) var notes: [String] = []

    init(_ inputs: DiffInputs, judging: Judging) throws {
        self.inputs = inputs; self.judging = judging
        let o = inputs.options
        let refA = inputs.backendA.map { $0.mode == nil } ?? false, refB = inputs.backendB.map { $0.mode == nil } ?? false
        truthBeside = judging.mode != nil && !(refA || refB) && !judging.truthFile
        streamed = refB ? inputs.backendB : (refA ? inputs.backendA : (truthBeside ? .ref : nil))
        streamsA = !refB && refA

        var calRun: CalibrationRun? = nil
        if let m = judging.mode, let be = m.backend {
            do { calRun = try CalibrationRun.run(be, try inputs.setup(), memory: o.memory) } catch let e as ExchangeError {
                if judging.otherBackend == be { throw e }
                uncalibrated = true
                notes.append("calibration skipped: \(e); \(m == .float32 ? "float32 tensors judged by the float32 rule alone" : "judged by the blanket rule of \(m.label.rawValue) alone") (README \"Tolerances\")")
            }
        }
        calibrationRun = calRun
        func side(_ f: ExchangeFile?, _ be: Backend?, streams: Bool) throws -> DiffSide {
            if let f { return DiffSide(file: f) }
            if streams { return DiffSide(streamedWithGradients: try inputs.setup().inputs != nil) }
            if let c = calRun, be == c.backend { return try DiffSide(run: c) }
            return DiffSide(held: try be!.run(try inputs.setup(), memory: o.memory))
        }
        if streamsA {
            b = try side(inputs.fileB, inputs.backendB, streams: false); a = try side(inputs.fileA, inputs.backendA, streams: true)
        } else {
            a = try side(inputs.fileA, inputs.backendA, streams: false); b = try side(inputs.fileB, inputs.backendB, streams: refB)
        }
        driver = streamed == nil || truthBeside ? nil : (streamsA ? a : b)

        // A backend run on a file's setup: the file's setup datasets were consumed, not compared;
        // backend outputs in groups the file does not record were not asked for.
        if let f = inputs.setupFile, inputs.fileA == nil || inputs.fileB == nil {
            let g = Set(f.index.keys.filter { !ExchangeFile.isSetup($0) }.map(DiffEngine.groupOf))
            for s in [a, b] {
                s.compared = s.file != nil ? s.full.filter { !ExchangeFile.isSetup($0) } : s.full.filter { g.contains(DiffEngine.groupOf($0)) }
            }
            recordedGroups = g
        } else {
            recordedGroups = nil
        }
    }

    /// Hands every dataset both sides compare to `compare` (side a's, side b's, and the
    /// truth's when the reference runs or a float64 file is the truth): as the reference
    /// streams them, then what no stream brought, in dataset order.
    func compareAll(_ compare: (String, NamedTensor, NamedTensor, NamedTensor?) throws -> Void) throws {
        var done = Set<String>()
        if let be = streamed {
            try be.stream(try inputs.setup(), memory: inputs.options.memory) { p, d in
                if let driver {
                    driver.full.insert(p)
                    driver.remember(p, d)
                    if let g = recordedGroups, !g.contains(DiffEngine.groupOf(p)) { return }
                    driver.compared.insert(p)
                    guard let y = try (streamsA ? b : a).forComparison(p) else { return }
                    done.insert(p)
                    if streamsA { try compare(p, d, y, d) } else { try compare(p, y, d, d) }
                } else {   // the truth beside two sides
                    guard let x = try a.forComparison(p), let y = try b.forComparison(p) else { return }
                    done.insert(p)
                    try compare(p, x, y, d)
                }
            }
            driver?.recent = [:]
        }
        for p in DatasetOrder.sorted(Array(a.compared), inputs.config) where !done.contains(p) {
            guard let y = try b.forComparison(p), let x = try a.forComparison(p) else { continue }
            try compare(p, x, y, judging.truthFile ? (judging.fileIsA ? y : x) : nil)
        }
    }

    /// The groups the backend computed that the file does not record (not compared).
    var notRecorded: [String] {
        guard let g = recordedGroups else { return [] }
        let computed = inputs.fileA == nil ? a.full : b.full
        return ["activations", "losses", "grads", "after_step", "sampler"].filter { grp in
            !g.contains(grp) && computed.contains { DiffEngine.groupOf($0) == grp }
        }
    }
}
