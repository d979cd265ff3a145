import Foundation
import Testing
import HDF5IO

/// Ranks 0...4, plus zero-sized dimensions.
let roundTripShapes: [[Int]] = [[], [5], [2, 3], [2, 3, 4], [2, 1, 3, 2], [0], [2, 0, 3]]

@Suite struct RoundTripTests {
    @Test(arguments: roundTripShapes)
    func datasetsOfEveryRank(shape: [Int]) throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("rt.h5").path
            let doubles = sampleDoubles(shape)
            let floats = doubles.map { Float($0) }
            let ints = doubles.indices.map { Int64($0) * (Int64.max / 1000) - 7 }

            let file = try HDF5File.create(path)
            try file.write("a/b/f64", doubles: doubles, shape: shape)
            try file.write("a/f32", floats: floats, shape: shape)
            try file.write("i64", int64s: ints, shape: shape)
            try file.close()

            let reader = try HDF5File.open(path)
            defer { try? reader.close() }
            let f64 = try reader.read("a/b/f64")
            #expect(f64 == HDF5Dataset(shape: shape, elementType: .float64, doubles: doubles, ints: nil),
                    "dataset a/b/f64, shape \(shape)")
            let f32 = try reader.read("/a/f32")
            #expect(f32 == HDF5Dataset(shape: shape, elementType: .float32, doubles: floats.map { Double($0) }, ints: nil),
                    "dataset a/f32, shape \(shape)")
            let i64 = try reader.read("i64")
            #expect(i64 == HDF5Dataset(shape: shape, elementType: .int64, doubles: ints.map { Double($0) }, ints: ints),
                    "dataset i64, shape \(shape)")
            let info = try reader.info("a/f32")
            #expect(info.shape == shape && info.elementType == .float32, "info of a/f32: \(info)")
        }
    }

    @Test func nestedGroupsAndListing() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("tree.h5").path
            let file = try HDF5File.create(path)
            try file.write("params/blocks.0.attn.qkv.weight", floats: [1, 2, 3, 4, 5, 6], shape: [2, 3])
            try file.write("params/blocks.0.attn.qkv.bias", floats: [0, 0, 0], shape: [3])
            try file.write("params/embed/tok", doubles: [1, 2], shape: [1, 2])
            try file.write("step", int64s: [42], shape: [])
            try file.write("opt/m/deep/er/x", doubles: [7], shape: [1])
            // Listing works on a file that is still being written.
            #expect(try file.datasetPaths().count == 5, "a file being written does not list its 5 datasets")
            try file.close()

            let reader = try HDF5File.open(path)
            #expect(try reader.datasetPaths() == [
                "opt/m/deep/er/x",
                "params/blocks.0.attn.qkv.bias",
                "params/blocks.0.attn.qkv.weight",
                "params/embed/tok",
                "step",
            ], "the written datasets read back in another list")
            #expect(try reader.groupPaths() == ["opt", "opt/m", "opt/m/deep", "opt/m/deep/er", "params", "params/embed"], "the implied groups read back in another list")
            #expect(reader.exists("params/blocks.0.attn.qkv.weight"), "a written dataset does not exist")
            #expect(reader.exists("/params/embed/"), "a group given with leading and trailing slashes does not exist")
            #expect(reader.exists("/"), "the root group does not exist")
            #expect(!reader.exists("params/nope"), "a path never written exists")
            #expect(!reader.exists("nope/deeper/still"), "a path under a missing group exists")
            #expect(!reader.exists("step/below-a-dataset"), "a path below a dataset exists")
            let w = try reader.read("params/blocks.0.attn.qkv.weight")
            #expect(w.shape == [2, 3] && w.doubles == [1, 2, 3, 4, 5, 6], "dataset params/blocks.0.attn.qkv.weight: \(w)")
            let step = try reader.read("step")
            #expect(step.shape == [] && step.ints == [42], "dataset step: \(step)")
            try reader.close()
            try reader.close()  // idempotent
        }
    }

    @Test func attributes() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("attrs.h5").path
            let file = try HDF5File.create(path)
            try file.write("g/w", doubles: [1], shape: [1])
            try file.setStringAttribute("title", "first")
            try file.setStringAttribute("title", "héllo wörld ✓ \"quoted\"")  // replaces
            try file.setStringAttribute("empty", "")
            try file.setDoubleAttribute("lr", 3e-4)
            try file.setDoubleAttribute("lr", 1e-3)  // replaces
            try file.setStringAttribute("note", "on a group", on: "g")
            try file.setDoubleAttribute("scale", -2.5, on: "/g/w")
            expectHDF5Error(["attrs.h5", "'missing'", "no such object"]) {
                try file.setDoubleAttribute("x", 1, on: "missing")
            }
            try file.close()

            let reader = try HDF5File.open(path)
            #expect(try reader.stringAttribute("title") == "héllo wörld ✓ \"quoted\"", "a string attribute with quotes and non-ASCII does not round-trip")
            #expect(try reader.stringAttribute("empty") == "", "an empty string attribute does not round-trip")
            #expect(try reader.doubleAttribute("lr") == 1e-3, "a float attribute does not round-trip")
            #expect(try reader.stringAttribute("note", of: "g") == "on a group", "a string attribute on a group does not round-trip")
            #expect(try reader.doubleAttribute("scale", of: "g/w") == -2.5, "a float attribute on a dataset does not round-trip")
            #expect(try reader.stringAttribute("absent") == nil, "a missing string attribute is not nil")
            #expect(try reader.doubleAttribute("absent", of: "g") == nil, "a missing float attribute on a group is not nil")
            expectHDF5Error(["'lr'", "64-bit float", "expected a string"]) { _ = try reader.stringAttribute("lr") }
            expectHDF5Error(["'title'", "string", "expected a number"]) { _ = try reader.doubleAttribute("title") }
            expectHDF5Error(["'nope'", "no such object"]) { _ = try reader.stringAttribute("x", of: "nope") }
            expectHDF5Error(["read-only"]) { try reader.setDoubleAttribute("x", 1) }
            expectHDF5Error(["read-only"]) { try reader.write("x", doubles: [1], shape: [1]) }
        }
    }

    @Test func atomicCreate() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("out.h5").path

            // Dropped without close(): neither the file nor a temporary file remains.
            do {
                let file = try HDF5File.create(path)
                try file.write("x", doubles: [1, 2], shape: [2])
                #expect(try listing(dir).count == 1, "a temporary file exists while writing")
                #expect(!FileManager.default.fileExists(atPath: path), "the final file exists before close()")
            }
            #expect(try listing(dir) == [], "a file dropped without close() left something behind")

            // discard() likewise.
            let discarded = try HDF5File.create(path)
            try discarded.write("x", doubles: [1], shape: [1])
            discarded.discard()
            #expect(try listing(dir) == [], "a discarded file left something behind")
            expectHDF5Error(["closed"]) { _ = try discarded.read("x") }

            // close() renames into place.
            let first = try HDF5File.create(path)
            try first.write("version", int64s: [1], shape: [])
            try first.close()
            #expect(try listing(dir) == ["out.h5"], "close() did not leave exactly out.h5")

            // An existing file is untouched until the replacement is closed, and kept if it is dropped.
            do {
                let second = try HDF5File.create(path)
                try second.write("version", int64s: [2], shape: [])
                #expect(try HDF5File.open(path).read("version").ints == [1], "the existing file changed before its replacement was closed")
            }
            #expect(try listing(dir) == ["out.h5"], "a dropped replacement left something besides out.h5")
            #expect(try HDF5File.open(path).read("version").ints == [1], "a dropped replacement changed the existing file")

            let third = try HDF5File.create(path)
            try third.write("version", int64s: [3], shape: [])
            try third.close()
            #expect(try listing(dir) == ["out.h5"], "a closed replacement did not leave exactly out.h5")
            #expect(try HDF5File.open(path).read("version").ints == [3], "a closed replacement is not what was read back")
        }
    }

    @Test func invalidWritesThrow() throws {
        try withTempDir { dir in
            let file = try HDF5File.create(dir.appendingPathComponent("bad.h5").path)
            defer { file.discard() }
            expectHDF5Error(["bad.h5", "'w'", "[2, 3]", "6 elements", "5 were given"]) {
                try file.write("w", doubles: [1, 2, 3, 4, 5], shape: [2, 3])
            }
            expectHDF5Error(["'s'", "1 elements", "2 were given"]) { try file.write("s", int64s: [1, 2], shape: []) }
            expectHDF5Error(["'n'", "negative"]) { try file.write("n", floats: [], shape: [-1]) }
            expectHDF5Error(["'big'", "too large"]) { try file.write("big", floats: [], shape: [Int.max, 4]) }
            expectHDF5Error(["empty"]) { try file.write("/", doubles: [1], shape: []) }
            try file.write("w", doubles: [1], shape: [1])
            expectHDF5Error(["'w'", "already exists"]) { try file.write("w", doubles: [1], shape: [1]) }
            expectHDF5Error(["'w/below'", "'w' exists and is not a group"]) { try file.write("w/below", doubles: [1], shape: [1]) }
            #expect(try file.datasetPaths() == ["w"], "a refused write changed the file's datasets")
        }
    }

    /// HDF5IO serialises HDF5 calls internally, so files can be used from concurrent tasks.
    @Test func concurrentUse() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hdf5io-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let shared = try HDF5File.open(try fixtureURL().path)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<8 {
                group.addTask {
                    let path = dir.appendingPathComponent("c\(i).h5").path
                    let values = sampleDoubles([i + 1, 3])
                    for _ in 0..<10 {
                        let file = try HDF5File.create(path)
                        try file.write("g/x", doubles: values, shape: [i + 1, 3])
                        try file.setDoubleAttribute("i", Double(i))
                        try file.close()
                        let back = try HDF5File.open(path)
                        #expect(try back.read("g/x").doubles == values, "dataset g/x in c\(i).h5")
                        #expect(try back.doubleAttribute("i") == Double(i), "attribute i in c\(i).h5 reads wrong")
                        #expect(try shared.read("i64").ints == [Int64.min, Int64.max, 9_007_199_254_740_993], "a file read while others are written reads wrong")
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try listing(dir) == (0..<8).map { "c\($0).h5" }.sorted(), "concurrent writers left other files than c0.h5 ... c7.h5")
    }

    @Test func createInMissingDirectoryThrows() {
        expectHDF5Error(["/nonexistent-dir-hdf5io/x.h5", "does not exist"]) {
            _ = try HDF5File.create("/nonexistent-dir-hdf5io/x.h5")
        }
    }
}
