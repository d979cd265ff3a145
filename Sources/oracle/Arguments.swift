import ArgumentParser
import SDDiTCore
import SDDiTDiff
import SDDiTFast

// The named values options take, parsed by ArgumentParser: help lists each option's values
// (`allValueStrings`), and a value that is none of them is refused before the command runs,
// in one line naming them (`Oracle.main`).

/// `--backend`: a backend by name (ref, fast-bf16, ...).
extension Backend: ExpressibleByArgument {
    /// What each backend runs, for help.
    public static var allValueDescriptions: [String: String] {
        Dictionary(uniqueKeysWithValues: allCases.map { ($0.rawValue, $0.argumentDescription) })
    }
    var argumentDescription: String {
        switch self {
        case .ref: return "the float64 reference, the truth"
        case .ref80: return "the reference's code in Float80"
        default: return "the fast path, " + mode!.phrase
        }
    }
}

/// `--mode` / `--precision`: the fast path's precision, named as its backend (fast, fast-bf16, ...).
extension FastPrecision: ExpressibleByArgument {
    public init?(argument: String) {
        guard let p = Self.allCases.first(where: { $0.argumentName == argument }) else { return nil }
        self = p
    }
    public static var allValueStrings: [String] { allCases.map(\.argumentName) }
    public static var allValueDescriptions: [String: String] {
        Dictionary(uniqueKeysWithValues: allCases.map { ($0.argumentName, Backend(rawValue: $0.argumentName)!.argumentDescription) })
    }
    public var defaultValueDescription: String { argumentName }

    /// The backend that runs this precision, by name (fast-tf32-conv is float32 but for the
    /// patch embedding: no precision of its own).
    var argumentName: String { Backend.allCases.first { $0.fastPrecision == self && $0 != .fastTF32Conv }!.rawValue }
}

/// `--init-mode`: random (every tensor non-zero) or dit (adaLN-Zero).
extension Initialization.Mode: ExpressibleByArgument {}

/// `--a` / `--b`: a backend by name, or an exchange file (any other value is a path).
extension Side: ExpressibleByArgument {
    public init?(argument: String) { self = Side.parse(argument) }
    /// The backend, when this side is one.
    var backend: Backend? {
        if case .backend(let be) = self { return be }
        return nil
    }
}

/// `precision --half`: the half type whose range the headroom sweep measures.
enum HalfType: String, CaseIterable, ExpressibleByArgument {
    case fp16, bf16
    /// The precision that stores values in it (its largest finite value and smallest normal).
    var precision: FastPrecision { self == .fp16 ? .fp16 : .bf16 }
}
