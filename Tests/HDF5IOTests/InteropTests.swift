import Foundation
import Testing
import HDF5IO

/// Parses the JSON file a Python helper wrote.
private func loadJSON(_ url: URL) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
    return try #require(object as? [String: Any], "JSON root is not an object")
}

// Python sends numbers as repr() strings: Foundation's JSON number parsing on Linux is not
// correctly rounded (it can be off by an ulp), while Double(String) is exact.
private func numbers(_ any: Any?) -> [Double]? { (any as? [String])?.map { Double($0) ?? .nan } }
private func ints(_ any: Any?) -> [Int64]? { (any as? [String])?.map { Int64($0) ?? .min } }

/// Runs a Python snippet with `args` as sys.argv[1...]; records an issue (with its output) on failure.
private func python(_ script: String, _ args: [String]) -> Bool {
    let result = runTool(["python3", "-c", script] + args)
    #expect(result.status == 0, "python3 failed (\(result.status)):\n\(result.output)")
    return result.status == 0
}

@Suite struct InteropTests {
    /// A file written by HDF5IO, read by h5py: same values, shapes, dtypes and attribute strings.
    @Test(.enabled(if: h5pyAvailable, "skipped: python3 with h5py is not importable"))
    func h5pyReadsOurFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("ours.h5").path
            let weight: [Float] = (0..<12).map { Float($0) * 0.1 - 0.55 }
            let embed = sampleDoubles([4, 3])
            let deep = sampleDoubles([1, 2, 1, 2])
            let ids: [Int64] = [0, -1, 1 << 40, -(1 << 50), 123_456_789]
            let file = try HDF5File.create(path)
            try file.write("params/blocks.0.attn.qkv.weight", floats: weight, shape: [2, 3, 2])
            try file.write("params/embed", doubles: embed, shape: [4, 3])
            try file.write("opt/m/a/b/deep", doubles: deep, shape: [1, 2, 1, 2])
            try file.write("ids", int64s: ids, shape: [5])
            try file.write("step", int64s: [1234], shape: [])
            try file.setStringAttribute("title", "tiny GPT — ünïcode ✓")
            try file.setDoubleAttribute("lr", 3e-4)
            try file.setStringAttribute("note", "params group", on: "params")
            try file.close()

            let json = dir.appendingPathComponent("out.json")
            let script = """
                import sys, json, h5py, numpy as np
                out = {"datasets": {}, "attrs": {}}
                with h5py.File(sys.argv[1], "r") as f:
                    def visit(name, obj):
                        if isinstance(obj, h5py.Dataset):
                            out["datasets"][name] = {"shape": list(obj.shape), "dtype": obj.dtype.str,
                                                     "values": [repr(x) for x in np.asarray(obj[()]).ravel().tolist()]}
                    f.visititems(visit)
                    for where in ["/", "params"]:
                        for k, v in f[where].attrs.items():
                            out["attrs"][where + ":" + k] = [type(v).__name__, v if isinstance(v, str) else repr(float(v))]
                json.dump(out, open(sys.argv[2], "w"))
                """
            guard python(script, [path, json.path]) else { return }
            let root = try loadJSON(json)
            let datasets = try #require(root["datasets"] as? [String: [String: Any]], "h5py's JSON has no datasets object")
            #expect(datasets.keys.sorted() == ["ids", "opt/m/a/b/deep", "params/blocks.0.attn.qkv.weight", "params/embed", "step"], "h5py lists other datasets than we wrote")

            let expected: [(String, [Int], String, [Double])] = [
                ("params/blocks.0.attn.qkv.weight", [2, 3, 2], "<f4", weight.map { Double($0) }),
                ("params/embed", [4, 3], "<f8", embed),
                ("opt/m/a/b/deep", [1, 2, 1, 2], "<f8", deep),
                ("step", [], "<i8", [1234]),
            ]
            for (name, shape, dtype, values) in expected {
                let d = datasets[name]
                #expect(d?["shape"] as? [Int] == shape, "dataset \(name): ours \(shape), h5py \(String(describing: d?["shape"]))")
                #expect(d?["dtype"] as? String == dtype, "dataset \(name): ours \(dtype), h5py \(String(describing: d?["dtype"]))")
                #expect(numbers(d?["values"]) == values, "dataset \(name): ours vs h5py values")
            }
            #expect(ints(datasets["ids"]?["values"]) == ids, "dataset ids: ours vs h5py values")
            #expect(datasets["ids"]?["dtype"] as? String == "<i8", "h5py sees dataset ids as \(String(describing: datasets["ids"]?["dtype"])), not little-endian int64")

            let attrs = try #require(root["attrs"] as? [String: [Any]], "h5py's JSON has no attrs object")
            #expect(attrs["/:title"]?.first as? String == "str", "title must come back as str: \(String(describing: attrs["/:title"]))")
            #expect(attrs["/:title"]?.last as? String == "tiny GPT — ünïcode ✓", "h5py reads the title attribute differently: \(String(describing: attrs["/:title"]))")
            #expect(attrs["params:note"]?.last as? String == "params group", "h5py reads params:note differently: \(String(describing: attrs["params:note"]))")
            #expect(attrs["/:lr"]?.first as? String == "float64", "h5py does not see lr as float64: \(String(describing: attrs["/:lr"]))")
            #expect((attrs["/:lr"]?.last as? String).flatMap { Double($0) } == 3e-4, "h5py reads lr as another value: \(String(describing: attrs["/:lr"]))")
        }
    }

    /// A file written by h5py is read back correctly by HDF5IO.
    @Test(.enabled(if: h5pyAvailable, "skipped: python3 with h5py is not importable"))
    func weReadH5pyFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("theirs.h5").path
            let json = dir.appendingPathComponent("expected.json")
            let script = """
                import sys, json, h5py, numpy as np
                rng = np.random.default_rng(0)
                data = {
                    "f64": rng.standard_normal((2, 3)),
                    "model/f32": rng.standard_normal((3, 4, 2)).astype("<f4"),
                    "model/layers.0/i64": np.array([-2**62, 0, 2**53 + 1, 7], dtype="<i8"),
                    "u8": rng.integers(0, 256, (2, 5)).astype("u1"),
                    "scalar": np.float64(2.718281828459045),
                    "f16": np.array([0.1, -1.5, 1000, 6e-5, 0], dtype="<f2"),
                    "i32": np.array([-7, 7, 2**31 - 1], dtype="<i4"),
                }
                out = {}
                with h5py.File(sys.argv[1], "w") as f:
                    for name, a in data.items():
                        f[name] = a
                        out[name] = {"shape": list(np.shape(a)), "values": [repr(x) for x in np.asarray(a).ravel().tolist()]}
                    f["flags"] = np.array([True, False])
                    f.attrs["name"] = "модель ✓"
                    f.attrs["lr"] = 3e-4
                    f["model"].attrs["epochs"] = 7
                json.dump(out, open(sys.argv[2], "w"))
                """
            guard python(script, [path, json.path]) else { return }
            let expected = try #require(try loadJSON(json) as? [String: [String: Any]], "h5py's JSON of its own file does not parse as datasets")

            let file = try HDF5File.open(path)
            #expect(try file.datasetPaths() == ["f16", "f64", "flags", "i32", "model/f32", "model/layers.0/i64", "scalar", "u8"], "we list other datasets than h5py wrote")
            let types: [String: HDF5ElementType] = [
                "f64": .float64, "model/f32": .float32, "model/layers.0/i64": .int64, "u8": .uint8,
                "scalar": .float64, "f16": .float16, "i32": .int32,
            ]
            for (name, type) in types {
                let d = try file.read(name)
                let want = expected[name]
                #expect(d.elementType == type, "dataset \(name): ours \(d.elementType), h5py \(type)")
                #expect(d.shape == want?["shape"] as? [Int], "dataset \(name): ours \(d.shape), h5py \(String(describing: want?["shape"]))")
                #expect(d.doubles == numbers(want?["values"]), "dataset \(name): ours vs h5py values")
                if type.isInteger {
                    #expect(d.ints == ints(want?["values"]), "dataset \(name): ours vs h5py exact ints")
                }
            }
            expectHDF5Error(["theirs.h5", "'flags'", "enum"]) { _ = try file.read("flags") }
            #expect(try file.stringAttribute("name") == "модель ✓", "h5py's UTF-8 string attribute reads wrong")
            #expect(try file.doubleAttribute("lr") == 3e-4, "h5py's float attribute lr reads wrong")
            #expect(try file.doubleAttribute("epochs", of: "model") == 7, "h5py's integer group attribute model:epochs reads wrong")
        }
    }

    /// `h5dump -H` (HDF5's own tool) opens a file we wrote.
    @Test(.enabled(if: h5dumpAvailable, "skipped: h5dump is not installed"))
    func h5dumpOpensOurFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("dump.h5").path
            let file = try HDF5File.create(path)
            try file.write("params/blocks.0.attn.qkv.weight", floats: [1, 2, 3, 4], shape: [2, 2])
            try file.write("step", int64s: [3], shape: [])
            try file.setStringAttribute("title", "dump me")
            try file.close()
            let result = runTool(["h5dump", "-H", path])
            #expect(result.status == 0, "h5dump -H failed:\n\(result.output)")
            for fragment in ["blocks.0.attn.qkv.weight", "H5T_IEEE_F32LE", "H5T_STD_I64LE", "SIMPLE { ( 2, 2 ) / ( 2, 2 ) }",
                             "DATASPACE  SCALAR", "\"title\"", "H5T_CSET_UTF8"] {
                #expect(result.output.contains(fragment), "h5dump -H output lacks '\(fragment)':\n\(result.output)")
            }
        }
    }
}
