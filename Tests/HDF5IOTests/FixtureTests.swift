import Foundation
import Testing
import HDF5IO

/// Reads Fixtures/types.h5, written by h5py (see make_fixtures.py); runs without Python.
@Suite struct FixtureTests {
    let file: HDF5File

    init() throws { file = try HDF5File.open(try fixtureURL().path) }

    @Test func listing() throws {
        // The soft link "soft" is not listed.
        #expect(try file.datasetPaths() == [
            "be_f64", "be_i32", "bools", "compound", "empty", "f16", "f32", "f64", "grp/sub/x",
            "i16", "i32", "i64", "i8", "scalar", "str_fixed", "str_vlen", "u16", "u32", "u64", "u64big", "u8",
        ], "the fixture's dataset listing differs (the soft link must not be listed)")
        #expect(try file.groupPaths() == ["grp", "grp/sub"], "the fixture's group listing differs")
        #expect(file.exists("soft"), "the soft link \"soft\" does not exist")
    }

    @Test func floats() throws {
        let cases: [(String, [Int], HDF5ElementType, [Double])] = [
            ("f64", [2, 3], .float64, [-2, -0.5, 1, 2.5, 4, 5.5]),
            ("f32", [4], .float32, [0.1, -2.5, 3e38, 1e-45].map { Double(Float($0)) }),
            ("f16", [3], .float16, [0.5, -2, 65504]),
            ("be_f64", [2], .float64, [1.25, -7]),
            ("scalar", [], .float64, [3.25]),
        ]
        for (name, shape, type, values) in cases {
            let d = try file.read(name)
            #expect(d == HDF5Dataset(shape: shape, elementType: type, doubles: values, ints: nil), "dataset \(name)")
        }
    }

    @Test func integers() throws {
        let cases: [(String, HDF5ElementType, [Int64])] = [
            ("i8", .int8, [-128, 0, 127]),
            ("i16", .int16, [-32768, 32767]),
            ("i32", .int32, [-2_147_483_648, 2_147_483_647]),
            ("i64", .int64, [Int64.min, Int64.max, 9_007_199_254_740_993]),
            ("u8", .uint8, [0, 1, 127, 128, 255]),
            ("u16", .uint16, [0, 65535]),
            ("u32", .uint32, [0, 4_294_967_295]),
            ("u64", .uint64, [0, Int64.max]),
            ("be_i32", .int32, [-5, 70000]),
        ]
        for (name, type, values) in cases {
            let d = try file.read(name)
            #expect(d.elementType == type && d.shape == [values.count], "dataset \(name): \(d.elementType) \(d.shape)")
            #expect(d.ints == values, "dataset \(name)")
            #expect(d.doubles == values.map { Double($0) }, "dataset \(name)")
        }
        let grid = try file.read("grp/sub/x")
        #expect(grid.shape == [2, 2] && grid.ints == [1, 2, 3, 4], "dataset grp/sub/x: \(grid)")
        // uint64 beyond Int64.max: no exact Int64 values, Double still available.
        let big = try file.read("u64big")
        #expect(big.elementType == .uint64 && big.ints == nil && big.doubles == [18_446_744_073_709_551_615.0], "uint64 beyond Int64.max: \(big.elementType), ints \(String(describing: big.ints)), doubles \(big.doubles)")
    }

    @Test func attributes() throws {
        #expect(try file.stringAttribute("title") == "héllo wörld ✓", "the UTF-8 variable-length attribute title reads wrong")
        #expect(try file.stringAttribute("ascii_fixed") == "fixed", "the fixed-length ASCII attribute reads wrong")
        #expect(try file.stringAttribute("utf8_fixed") == "grüße", "the fixed-length UTF-8 attribute reads wrong")
        #expect(try file.stringAttribute("spacepad") == "abc", "the space-padded fixed-length attribute does not read as abc (padding kept?)")
        #expect(try file.stringAttribute("note", of: "grp") == "group note", "the group attribute grp:note reads wrong")
        #expect(try file.doubleAttribute("lr") == 0.001, "the float attribute lr reads wrong")
        #expect(try file.doubleAttribute("steps") == 1000, "the integer attribute steps does not read as 1000.0")
        expectHDF5Error(["'flag'", "enum", "expected a number"]) { _ = try file.doubleAttribute("flag") }
        expectHDF5Error(["'list'", "3 elements", "expected a scalar"]) { _ = try file.doubleAttribute("list") }
    }
}
