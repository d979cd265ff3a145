import CHDF5
import Foundation

// MARK: - Public value types

/// Element types HDF5IO can read. Anything else (strings, compound, enum such as numpy bool,
/// opaque, ...) is rejected with an `HDF5Error`.
public enum HDF5ElementType: String, Sendable, CaseIterable {
    case float64, float32, float16, int64, int32, int16, int8, uint64, uint32, uint16, uint8

    public var isInteger: Bool {
        switch self {
        case .float64, .float32, .float16: false
        default: true
        }
    }
}

/// One-line error naming the file, the object (when there is one) and what went wrong.
public struct HDF5Error: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A dataset read into memory, in C (row-major) order like numpy.
public struct HDF5Dataset: Sendable, Equatable {
    /// Dimensions; `[]` for a rank-0 scalar (which has one element).
    public var shape: [Int]
    public var elementType: HDF5ElementType
    /// All values converted to Double (integers too, possibly rounding above 2^53).
    public var doubles: [Double]
    /// Exact values for integer datasets; nil for floats, and for uint64 data holding a
    /// value above `Int64.max`.
    public var ints: [Int64]?

    public init(shape: [Int], elementType: HDF5ElementType, doubles: [Double], ints: [Int64]?) {
        self.shape = shape
        self.elementType = elementType
        self.doubles = doubles
        self.ints = ints
    }
}

// MARK: - Library-wide state

/// Serialises every call into the HDF5 C library. HDF5 is not thread-safe in general
/// (Debian's build happens to be, but it serialises internally anyway), so HDF5IO takes
/// this process-wide lock around each public operation. Recursive, because `deinit` and
/// public methods may nest.
private let hdf5Lock = NSRecursiveLock()

/// Runs `body` under the HDF5 lock with HDF5's automatic error-stack printing turned off.
/// The setting is per-thread in thread-safe HDF5 builds, hence it is (cheaply) repeated.
private func withHDF5<T>(_ body: () throws -> T) rethrows -> T {
    hdf5Lock.lock()
    defer { hdf5Lock.unlock() }
    _ = H5Eset_auto2(sd_H5E_DEFAULT(), nil, nil)
    return try body()
}

/// The most specific message on this thread's HDF5 error stack ("" when empty).
private func hdf5Detail() -> String {
    var buf = [CChar](repeating: 0, count: 512)
    sd_innermost_error(&buf)
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// "HDF5 file '<file>': '<object>': <message> [HDF5: <innermost HDF5 reason>]".
private func fileError(_ file: String, _ object: String?, _ message: String, detail: Bool) -> HDF5Error {
    let d = detail ? hdf5Detail() : ""
    let obj = object.map { "'\($0.isEmpty ? "/" : $0)': " } ?? ""
    return HDF5Error("HDF5 file '\(file)': \(obj)\(message)" + (d.isEmpty ? "" : " [HDF5: \(d)]"))
}

/// "a/b/" or "/a/b" -> "a/b"; "/" -> "".
private func normalize(_ path: String) -> String {
    var p = Substring(path)
    while p.hasPrefix("/") { p = p.dropFirst() }
    while p.hasSuffix("/") { p = p.dropLast() }
    return String(p)
}

// MARK: - HDF5File

/// An HDF5 file opened read-only (`open`) or being written (`create`).
///
/// Thread safety: all HDF5 calls made by HDF5IO are serialised by a process-wide lock, so
/// an `HDF5File` may be used from several threads, but operations never run in parallel.
/// Do not call the HDF5 C library directly from elsewhere in the process concurrently.
public final class HDF5File: @unchecked Sendable {
    /// The path given to `open`/`create` (the final name, not the temporary file).
    public let path: String
    /// True for files made with `create`.
    public let isWritable: Bool

    /// -1 once closed. Guarded by `hdf5Lock`.
    private var fid: hid_t
    /// Temporary file still to be renamed over `path` (or deleted). Guarded by `hdf5Lock`.
    private var pendingTemp: String?

    private init(path: String, fid: hid_t, temp: String?) {
        self.path = path
        self.fid = fid
        self.pendingTemp = temp
        self.isWritable = temp != nil
    }

    deinit {
        withHDF5 { abandon() }
    }

    // MARK: Opening and closing

    /// Opens an existing file read-only. Throws a clear error for a missing file, a
    /// directory, an empty, non-HDF5 or truncated file.
    /// Whether `open` first reads the whole file in the separate `h5probe` process (default
    /// on, when h5probe sits next to the running executable): a corrupt file that crashes the
    /// HDF5 C library then yields an error instead of a signal in the caller.
    nonisolated(unsafe) public static var isolateReads = true

    /// The h5probe executable: next to the running program (SwiftPM builds both into one folder).
    static let probeURL: URL? = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let c = exe.deletingLastPathComponent().appendingPathComponent("h5probe")
        return FileManager.default.isExecutableFile(atPath: c.path) ? c : nil
    }()

    /// Runs h5probe on `path` (posix_spawn: no fork handlers, no inherited locks); returns a
    /// description when it died from a signal, nil when it exited (cleanly or with an error
    /// that the caller's own read will report) or could not run.
    static func probeCrash(_ path: String) -> String? {
        guard let exe = probeURL else { return nil }
        let p = Process()
        p.executableURL = exe
        p.arguments = [path, String(ProcessInfo.processInfo.physicalMemory / 2)]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        p.waitUntilExit()
        return p.terminationReason == .uncaughtSignal ? "signal \(p.terminationStatus)" : nil
    }

    public static func open(_ path: String) throws -> HDF5File {
        try withHDF5 {
            func fail(_ msg: String, detail: Bool = false) -> HDF5Error { fileError(path, nil, msg, detail: detail) }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw fail("no such file")
            }
            if isDir.boolValue { throw fail("is a directory, not an HDF5 file") }
            guard FileManager.default.isReadableFile(atPath: path) else { throw fail("permission denied") }
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil
            if size == 0 { throw fail("empty file (0 bytes), not an HDF5 file") }
            let sizeText = size.map { "\($0) bytes" } ?? "unknown size"

            let isHDF5 = H5Fis_hdf5(path)
            if isHDF5 == 0 { throw fail("not an HDF5 file (no HDF5 signature found; \(sizeText))") }
            if isHDF5 < 0 { throw fail("cannot read file", detail: true) }

            if isolateReads, let crash = probeCrash(path) {
                throw fail("corrupt HDF5 file: reading it crashed the HDF5 library (\(crash)) in the isolated h5probe process; \(sizeText)")
            }

            let fapl = sd_make_fapl(0)
            guard fapl >= 0 else { throw fail("cannot create file-access property list", detail: true) }
            defer { H5Pclose(fapl) }
            let fid = H5Fopen(path, sd_H5F_ACC_RDONLY(), fapl)
            guard fid >= 0 else {
                throw fail("cannot open HDF5 file (truncated or corrupt? \(sizeText))", detail: true)
            }
            return HDF5File(path: path, fid: fid, temp: nil)
        }
    }

    /// Starts writing a new file. Data go to a hidden temporary file in the same directory;
    /// `close()` flushes it and atomically renames it over `path`. If the object is dropped
    /// without `close()`, or `discard()` is called, the temporary file is deleted and `path`
    /// is left untouched.
    public static func create(_ path: String) throws -> HDF5File {
        try withHDF5 {
            func fail(_ msg: String, detail: Bool = false) -> HDF5Error { fileError(path, nil, msg, detail: detail) }
            let url = URL(fileURLWithPath: path)
            let dir = url.deletingLastPathComponent().path
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw fail("cannot create: directory '\(dir)' does not exist")
            }
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                throw fail("cannot create: path is a directory")
            }
            let suffix = UUID().uuidString.prefix(8).lowercased()
            let temp = url.deletingLastPathComponent()
                .appendingPathComponent(".\(url.lastPathComponent).tmp-\(suffix)").path

            let fapl = sd_make_fapl(1)
            guard fapl >= 0 else { throw fail("cannot create file-access property list", detail: true) }
            defer { H5Pclose(fapl) }
            let fid = H5Fcreate(temp, sd_H5F_ACC_EXCL(), sd_H5P_DEFAULT(), fapl)
            guard fid >= 0 else { throw fail("cannot create temporary file '\(temp)'", detail: true) }
            return HDF5File(path: path, fid: fid, temp: temp)
        }
    }

    /// Read-only file: closes it. Created file: flushes, closes, fsyncs and atomically renames
    /// the temporary file over `path`; on failure the temporary file is removed. Idempotent.
    public func close() throws {
        try withHDF5 {
            guard fid >= 0 else { return }
            let id = fid
            fid = -1
            guard let temp = pendingTemp else {
                if H5Fclose(id) < 0 { throw error(nil, "cannot close file", detail: true) }
                return
            }
            pendingTemp = nil
            var ok = H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0
            ok = H5Fclose(id) >= 0 && ok
            guard ok else {
                unlink(temp)
                throw error(nil, "cannot write file; nothing was saved", detail: true)
            }
            if let handle = FileHandle(forReadingAtPath: temp) {  // fsync before the rename
                try? handle.synchronize()
                try? handle.close()
            }
            if rename(temp, path) != 0 {
                let reason = String(cString: strerror(errno))
                unlink(temp)
                throw error(nil, "cannot rename temporary file into place: \(reason)")
            }
        }
    }

    /// Closes without saving: a created file's temporary file is deleted. Idempotent.
    public func discard() {
        withHDF5 { abandon() }
    }

    /// Must be called with the lock held.
    private func abandon() {
        if fid >= 0 { H5Fclose(fid) }
        fid = -1
        if let temp = pendingTemp { unlink(temp) }
        pendingTemp = nil
    }

    // MARK: Listing

    /// Full paths (no leading slash) of every dataset, walking groups recursively in name
    /// order (depth first). Only hard links are followed; soft and external links are skipped.
    public func datasetPaths() throws -> [String] {
        try withHDF5 { try walk().datasets }
    }

    /// Full paths (no leading slash) of every group below the root, in the same order.
    public func groupPaths() throws -> [String] {
        try withHDF5 { try walk().groups }
    }

    /// Whether `path` names an existing group or dataset ("" and "/" are the root group).
    public func exists(_ path: String) -> Bool {
        withHDF5 { fid >= 0 && objectExists(normalize(path)) }
    }

    // MARK: Reading datasets

    /// Shape and element type of a dataset, without reading its data.
    public func info(_ path: String) throws -> (shape: [Int], elementType: HDF5ElementType) {
        try withHDF5 {
            let p = normalize(path)
            let did = try openDataset(p)
            defer { H5Oclose(did) }
            return (try shape(of: did, p), try elementType(of: did, p))
        }
    }

    /// Reads a whole dataset of any rank (rank 0 included) holding floats (64/32/16-bit) or
    /// integers (8-64 bit, signed or unsigned).
    public func read(_ path: String) throws -> HDF5Dataset {
        try withHDF5 {
            let p = normalize(path)
            let did = try openDataset(p)
            defer { H5Oclose(did) }
            let shape = try shape(of: did, p)
            let type = try elementType(of: did, p)
            var count = 1
            for d in shape {
                let (c, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else { throw error(p, "shape \(shape) is too large") }
                count = c
            }
            try checkPlausibleSize(did, p, shape: shape, count: count)

            func readAll<T>(_ memType: hid_t, _ zero: T) throws -> [T] {
                var buf = [T](repeating: zero, count: count)
                guard count > 0 else { return buf }
                let status = buf.withUnsafeMutableBytes {
                    H5Dread(did, memType, sd_H5S_ALL(), sd_H5S_ALL(), sd_H5P_DEFAULT(), $0.baseAddress)
                }
                guard status >= 0 else { throw error(p, "cannot read \(type.rawValue) data", detail: true) }
                return buf
            }

            switch type {
            case .float64, .float32, .float16:
                let values = try readAll(sd_H5T_NATIVE_DOUBLE(), 0.0)
                return HDF5Dataset(shape: shape, elementType: type, doubles: values, ints: nil)
            case .uint64:
                let values = try readAll(sd_H5T_NATIVE_UINT64(), UInt64(0))
                let exact = values.allSatisfy { $0 <= UInt64(Int64.max) } ? values.map { Int64($0) } : nil
                return HDF5Dataset(shape: shape, elementType: type, doubles: values.map { Double($0) }, ints: exact)
            default:
                let values = try readAll(sd_H5T_NATIVE_INT64(), Int64(0))
                return HDF5Dataset(shape: shape, elementType: type, doubles: values.map { Double($0) }, ints: values)
            }
        }
    }

    /// A corrupt header can claim any shape: refuse before allocating when the claim exceeds
    /// half the machine's memory, or when an unfiltered dataset stores fewer bytes than its
    /// shape needs (truncated data).
    private func checkPlausibleSize(_ did: hid_t, _ p: String, shape: [Int], count: Int) throws {
        let (bytes, overflow) = count.multipliedReportingOverflow(by: 8)
        let memory = Double(ProcessInfo.processInfo.physicalMemory)
        if overflow || Double(bytes) > memory / 2 {
            throw error(p, String(format: "shape %@ claims %d elements (%.3g GiB), more than half this machine's memory: corrupt or too large",
                                  "\(shape)", count, Double(count) * 8 / 1073741824))
        }
        guard count > 0 else { return }
        let plist = H5Dget_create_plist(did)
        guard plist >= 0 else { return }
        defer { H5Pclose(plist) }
        guard H5Pget_nfilters(plist) == 0 else { return }   // compressed: stored size may be anything
        let tid = H5Dget_type(did)
        guard tid >= 0 else { return }
        defer { H5Tclose(tid) }
        let need = UInt64(count) * UInt64(H5Tget_size(tid))
        let stored = UInt64(H5Dget_storage_size(did))
        if H5Dget_space_status_allocated(did) != 0 && stored < need {
            throw error(p, "shape \(shape) needs \(need) bytes but the file stores \(stored): truncated or corrupt")
        }
    }

    // MARK: Writing datasets

    /// Writes a float64 dataset, creating intermediate groups. `shape: []` writes a scalar.
    public func write(_ path: String, doubles: [Double], shape: [Int]) throws {
        try doubles.withUnsafeBytes {
            try writeDataset(path, shape: shape, count: doubles.count, fileType: sd_H5T_IEEE_F64LE(),
                             memType: sd_H5T_NATIVE_DOUBLE(), data: $0.baseAddress)
        }
    }

    /// Writes a float32 dataset, creating intermediate groups. `shape: []` writes a scalar.
    public func write(_ path: String, floats: [Float], shape: [Int]) throws {
        try floats.withUnsafeBytes {
            try writeDataset(path, shape: shape, count: floats.count, fileType: sd_H5T_IEEE_F32LE(),
                             memType: sd_H5T_NATIVE_FLOAT(), data: $0.baseAddress)
        }
    }

    /// Writes an int64 dataset, creating intermediate groups. `shape: []` writes a scalar.
    public func write(_ path: String, int64s: [Int64], shape: [Int]) throws {
        try int64s.withUnsafeBytes {
            try writeDataset(path, shape: shape, count: int64s.count, fileType: sd_H5T_STD_I64LE(),
                             memType: sd_H5T_NATIVE_INT64(), data: $0.baseAddress)
        }
    }

    // MARK: Attributes

    /// A string attribute of `object` (default: the root group); nil when absent. Accepts
    /// variable- and fixed-length strings, ASCII or UTF-8.
    public func stringAttribute(_ name: String, of object: String = "/") throws -> String? {
        try withHDF5 {
            let obj = normalize(object)
            guard let aid = try openAttribute(name, of: obj) else { return nil }
            defer { H5Aclose(aid) }
            let what = "attribute '\(name)'"
            let type = try check(H5Aget_type(aid), obj, "cannot get type of \(what)")
            defer { H5Tclose(type) }
            guard H5Tget_class(type) == H5T_STRING else {
                throw error(obj, "\(what) is \(describe(type)), expected a string")
            }
            try requireScalar(aid, obj, what)

            if try check(H5Tis_variable_str(type), obj, "cannot inspect \(what)") > 0 {
                let mem = try check(H5Tcopy(sd_H5T_C_S1()), obj, "cannot copy string type")
                defer { H5Tclose(mem) }
                try check(H5Tset_size(mem, sd_H5T_VARIABLE()), obj, "cannot set string size")
                try check(H5Tset_cset(mem, H5Tget_cset(type)), obj, "cannot set string encoding")
                var ptr: UnsafeMutablePointer<CChar>? = nil
                try check(H5Aread(aid, mem, &ptr), obj, "cannot read \(what)")
                defer { if let ptr { H5free_memory(ptr) } }
                return ptr.map { String(cString: $0) } ?? ""
            } else {
                let size = H5Tget_size(type)
                guard size > 0 else { throw error(obj, "cannot get size of \(what)", detail: true) }
                var bytes = [UInt8](repeating: 0, count: size)
                try check(H5Aread(aid, type, &bytes), obj, "cannot read \(what)")
                if H5Tget_strpad(type) == H5T_STR_SPACEPAD {
                    while bytes.last == 0x20 { bytes.removeLast() }
                } else if let nul = bytes.firstIndex(of: 0) {
                    bytes.removeSubrange(nul...)
                }
                return String(decoding: bytes, as: UTF8.self)
            }
        }
    }

    /// A numeric (float or integer) scalar attribute as Double; nil when absent.
    public func doubleAttribute(_ name: String, of object: String = "/") throws -> Double? {
        try withHDF5 {
            let obj = normalize(object)
            guard let aid = try openAttribute(name, of: obj) else { return nil }
            defer { H5Aclose(aid) }
            let what = "attribute '\(name)'"
            let type = try check(H5Aget_type(aid), obj, "cannot get type of \(what)")
            defer { H5Tclose(type) }
            let cls = H5Tget_class(type)
            guard cls == H5T_FLOAT || cls == H5T_INTEGER else {
                throw error(obj, "\(what) is \(describe(type)), expected a number")
            }
            try requireScalar(aid, obj, what)
            var value = 0.0
            try check(H5Aread(aid, sd_H5T_NATIVE_DOUBLE(), &value), obj, "cannot read \(what)")
            return value
        }
    }

    /// Sets (replacing any existing) a variable-length UTF-8 string attribute, which h5py
    /// reads back as `str`.
    public func setStringAttribute(_ name: String, _ value: String, on object: String = "/") throws {
        try withHDF5 {
            let obj = normalize(object)
            let type = try check(H5Tcopy(sd_H5T_C_S1()), obj, "cannot copy string type")
            defer { H5Tclose(type) }
            try check(H5Tset_size(type, sd_H5T_VARIABLE()), obj, "cannot set string size")
            try check(H5Tset_cset(type, H5T_CSET_UTF8), obj, "cannot set string encoding")
            let aid = try createAttribute(name, on: obj, type: type)
            defer { H5Aclose(aid) }
            try value.withCString { cstr in
                var ptr: UnsafePointer<CChar>? = cstr
                try check(H5Awrite(aid, type, &ptr), obj, "cannot write attribute '\(name)'")
            }
        }
    }

    /// Sets (replacing any existing) a float64 scalar attribute.
    public func setDoubleAttribute(_ name: String, _ value: Double, on object: String = "/") throws {
        try withHDF5 {
            let obj = normalize(object)
            let aid = try createAttribute(name, on: obj, type: sd_H5T_IEEE_F64LE())
            defer { H5Aclose(aid) }
            var v = value
            try check(H5Awrite(aid, sd_H5T_NATIVE_DOUBLE(), &v), obj, "cannot write attribute '\(name)'")
        }
    }

    // MARK: - Private helpers (call with the lock held)

    /// An error naming this file and optionally the object; `detail` appends HDF5's own reason.
    private func error(_ object: String?, _ message: String, detail: Bool = false) -> HDF5Error {
        fileError(path, object, message, detail: detail)
    }

    /// Throws (with HDF5's reason) when an HDF5 call returned a negative id/status.
    @discardableResult
    private func check<T: BinaryInteger>(_ result: T, _ object: String?, _ what: @autoclosure () -> String) throws -> T {
        guard result >= 0 else { throw error(object, what(), detail: true) }
        return result
    }

    private func requireOpen() throws {
        guard fid >= 0 else { throw error(nil, "file is closed") }
    }

    private func requireWritable(_ object: String) throws {
        try requireOpen()
        guard isWritable else { throw error(object, "file is open read-only") }
    }

    /// HDF5 path for a normalized path ("" is the root group).
    private func h5(_ p: String) -> String { "/" + p }

    /// True when every component of `p` exists and resolves to an object.
    private func objectExists(_ p: String) -> Bool {
        if p.isEmpty { return true }
        var prefix = ""
        for part in p.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + part
            guard H5Lexists(fid, prefix, sd_H5P_DEFAULT()) > 0 else { return false }
        }
        return H5Oexists_by_name(fid, prefix, sd_H5P_DEFAULT()) > 0
    }

    /// Kind of the existing object at `p` (H5I_BADID when it cannot be opened).
    private func objectType(_ p: String) -> H5I_type_t {
        let oid = H5Oopen(fid, h5(p), sd_H5P_DEFAULT())
        guard oid >= 0 else { return H5I_BADID }
        defer { H5Oclose(oid) }
        return H5Iget_type(oid)
    }

    /// Opens `p` and checks it is a dataset. Close with `H5Oclose`.
    private func openDataset(_ p: String) throws -> hid_t {
        try requireOpen()
        guard !p.isEmpty, objectExists(p) else { throw error(p, "no such dataset") }
        let oid = try check(H5Oopen(fid, h5(p), sd_H5P_DEFAULT()), p, "cannot open object")
        guard H5Iget_type(oid) == H5I_DATASET else {
            let kind = H5Iget_type(oid) == H5I_GROUP ? "a group" : "not a dataset"
            H5Oclose(oid)
            throw error(p, "expected a dataset, found \(kind)")
        }
        return oid
    }

    private func shape(of did: hid_t, _ p: String) throws -> [Int] {
        let space = try check(H5Dget_space(did), p, "cannot get dataspace")
        defer { H5Sclose(space) }
        switch H5Sget_simple_extent_type(space) {
        case H5S_SCALAR:
            return []
        case H5S_SIMPLE:
            let rank = try check(H5Sget_simple_extent_ndims(space), p, "cannot get rank")
            var dims = [hsize_t](repeating: 0, count: Int(rank))
            try check(H5Sget_simple_extent_dims(space, &dims, nil), p, "cannot get dimensions")
            return try dims.map {
                guard let d = Int(exactly: $0) else { throw error(p, "dimension \($0) is too large") }
                return d
            }
        case H5S_NULL:
            throw error(p, "dataset has a null dataspace (no data)")
        default:
            throw error(p, "cannot get dataspace type", detail: true)
        }
    }

    private func elementType(of did: hid_t, _ p: String) throws -> HDF5ElementType {
        let type = try check(H5Dget_type(did), p, "cannot get datatype")
        defer { H5Tclose(type) }
        let size = H5Tget_size(type)
        let found: HDF5ElementType?
        switch H5Tget_class(type) {
        case H5T_FLOAT:
            found = [2: .float16, 4: .float32, 8: .float64][size]
        case H5T_INTEGER:
            let signed = H5Tget_sign(type) == H5T_SGN_2
            found = signed ? [1: .int8, 2: .int16, 4: .int32, 8: .int64][size]
                           : [1: .uint8, 2: .uint16, 4: .uint32, 8: .uint64][size]
        default:
            found = nil
        }
        guard let found else {
            let supported = HDF5ElementType.allCases.map(\.rawValue).joined(separator: ", ")
            throw error(p, "unsupported element type \(describe(type)) (supported: \(supported))")
        }
        return found
    }

    /// Human-readable name of an HDF5 datatype, for error messages.
    private func describe(_ type: hid_t) -> String {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_INTEGER: return "\(size * 8)-bit integer"
        case H5T_FLOAT: return "\(size * 8)-bit float"
        case H5T_STRING: return H5Tis_variable_str(type) > 0 ? "string (variable-length)" : "string (fixed-length, \(size) bytes)"
        case H5T_COMPOUND: return "compound"
        case H5T_ENUM: return "enum (e.g. a numpy bool)"
        case H5T_BITFIELD: return "bitfield"
        case H5T_OPAQUE: return "opaque"
        case H5T_REFERENCE: return "reference"
        case H5T_VLEN: return "variable-length sequence"
        case H5T_ARRAY: return "array"
        case H5T_TIME: return "time"
        default: return "unknown type"
        }
    }

    /// Opens attribute `name` of object `obj`; nil when the object has no such attribute.
    private func openAttribute(_ name: String, of obj: String) throws -> hid_t? {
        try requireOpen()
        guard objectExists(obj) else { throw error(obj, "no such object (looking for attribute '\(name)')") }
        let present = try check(H5Aexists_by_name(fid, h5(obj), name, sd_H5P_DEFAULT()), obj,
                                "cannot look up attribute '\(name)'")
        guard present > 0 else { return nil }
        return try check(H5Aopen_by_name(fid, h5(obj), name, sd_H5P_DEFAULT(), sd_H5P_DEFAULT()), obj,
                         "cannot open attribute '\(name)'")
    }

    private func requireScalar(_ aid: hid_t, _ obj: String, _ what: String) throws {
        let space = try check(H5Aget_space(aid), obj, "cannot get dataspace of \(what)")
        defer { H5Sclose(space) }
        let n = try check(H5Sget_simple_extent_npoints(space), obj, "cannot get size of \(what)")
        guard n == 1 else { throw error(obj, "\(what) has \(n) elements, expected a scalar") }
    }

    /// Creates a scalar attribute, deleting any existing one of the same name. Close with `H5Aclose`.
    private func createAttribute(_ name: String, on obj: String, type: hid_t) throws -> hid_t {
        try requireWritable(obj)
        guard !name.isEmpty else { throw error(obj, "attribute name is empty") }
        guard objectExists(obj) else { throw error(obj, "no such object (setting attribute '\(name)')") }
        if try check(H5Aexists_by_name(fid, h5(obj), name, sd_H5P_DEFAULT()), obj, "cannot look up attribute '\(name)'") > 0 {
            try check(H5Adelete_by_name(fid, h5(obj), name, sd_H5P_DEFAULT()), obj, "cannot replace attribute '\(name)'")
        }
        let space = try check(H5Screate(H5S_SCALAR), obj, "cannot create dataspace")
        defer { H5Sclose(space) }
        return try check(H5Acreate_by_name(fid, h5(obj), name, type, space, sd_H5P_DEFAULT(), sd_H5P_DEFAULT(), sd_H5P_DEFAULT()),
                         obj, "cannot create attribute '\(name)'")
    }

    private func writeDataset(_ path: String, shape: [Int], count: Int, fileType: hid_t, memType: hid_t,
                              data: UnsafeRawPointer?) throws {
        try withHDF5 {
            let p = normalize(path)
            try requireWritable(p)
            guard !p.isEmpty else { throw error(nil, "dataset path is empty") }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw error(p, "shape \(shape) has a negative dimension") }
            var expected = 1
            for d in shape {
                let (c, overflow) = expected.multipliedReportingOverflow(by: d)
                guard !overflow else { throw error(p, "shape \(shape) is too large") }
                expected = c
            }
            guard expected == count else {
                throw error(p, "shape \(shape) needs \(expected) elements but \(count) were given")
            }
            guard !objectExists(p) else { throw error(p, "already exists") }
            var prefix = ""
            for part in p.split(separator: "/").dropLast() {
                prefix += prefix.isEmpty ? String(part) : "/" + part
                if objectExists(prefix), objectType(prefix) != H5I_GROUP {
                    throw error(p, "cannot create dataset: '\(prefix)' exists and is not a group")
                }
            }

            let space = shape.isEmpty
                ? H5Screate(H5S_SCALAR)
                : H5Screate_simple(Int32(shape.count), shape.map { hsize_t($0) }, nil)
            try check(space, p, "cannot create dataspace for shape \(shape)")
            defer { H5Sclose(space) }
            let lcpl = try check(H5Pcreate(sd_H5P_LINK_CREATE()), p, "cannot create link property list")
            defer { H5Pclose(lcpl) }
            try check(H5Pset_create_intermediate_group(lcpl, 1), p, "cannot enable intermediate groups")
            let did = try check(H5Dcreate2(fid, h5(p), fileType, space, lcpl, sd_H5P_DEFAULT(), sd_H5P_DEFAULT()),
                                p, "cannot create dataset")
            defer { H5Dclose(did) }
            if count > 0 {
                try check(H5Dwrite(did, memType, sd_H5S_ALL(), sd_H5S_ALL(), sd_H5P_DEFAULT(), data), p,
                          "cannot write data")
            }
        }
    }

    private func walk() throws -> (groups: [String], datasets: [String]) {
        try requireOpen()
        var groups: [String] = [], datasets: [String] = [], visited = Set<UInt64>()
        let root = try check(H5Gopen2(fid, "/", sd_H5P_DEFAULT()), nil, "cannot open root group")
        defer { H5Gclose(root) }
        var addr: UInt64 = 0
        try check(sd_object_address(root, &addr), nil, "cannot get root group address")
        visited.insert(addr)

        func visit(_ gid: hid_t, _ prefix: String) throws {
            let where_ = prefix.isEmpty ? "/" : prefix
            var ginfo = H5G_info_t()
            try check(H5Gget_info(gid, &ginfo), where_, "cannot list group")
            for i in 0..<ginfo.nlinks {
                let len = try check(H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, sd_H5P_DEFAULT()),
                                    where_, "cannot get link name #\(i)")
                var buf = [CChar](repeating: 0, count: Int(len) + 1)
                try check(H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, buf.count, sd_H5P_DEFAULT()),
                          where_, "cannot get link name #\(i)")
                let name = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                let full = prefix.isEmpty ? name : prefix + "/" + name

                var linfo = H5L_info_t()
                try check(H5Lget_info(gid, name, &linfo, sd_H5P_DEFAULT()), full, "cannot get link info")
                guard linfo.type == H5L_TYPE_HARD else { continue }
                let oid = try check(H5Oopen(gid, name, sd_H5P_DEFAULT()), full, "cannot open object")
                defer { H5Oclose(oid) }
                switch H5Iget_type(oid) {
                case H5I_DATASET:
                    datasets.append(full)
                case H5I_GROUP:
                    var a: UInt64 = 0
                    try check(sd_object_address(oid, &a), full, "cannot get object address")
                    guard visited.insert(a).inserted else { continue }  // hard-link cycle / alias
                    groups.append(full)
                    try visit(oid, full)
                default:
                    continue  // named datatypes
                }
            }
        }
        try visit(root, "")
        return (groups, datasets)
    }
}
