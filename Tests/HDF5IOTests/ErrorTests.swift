import Foundation
import Testing
import HDF5IO

@Suite struct ErrorTests {
    @Test func missingFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("missing.h5").path
            expectHDF5Error([path, "no such file"]) { _ = try HDF5File.open(path) }
        }
    }

    @Test func directory() throws {
        try withTempDir { dir in
            expectHDF5Error([dir.path, "is a directory"]) { _ = try HDF5File.open(dir.path) }
        }
    }

    @Test func emptyFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("empty.h5").path
            try Data().write(to: URL(fileURLWithPath: path))
            expectHDF5Error(["empty.h5", "empty file"]) { _ = try HDF5File.open(path) }
        }
    }

    @Test func nonHDF5Bytes() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("random.h5").path
            var rng = SystemRandomNumberGenerator()
            try Data((0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }).write(to: URL(fileURLWithPath: path))
            expectHDF5Error(["random.h5", "not an HDF5 file"]) { _ = try HDF5File.open(path) }
            try Data("just some text\n".utf8).write(to: URL(fileURLWithPath: path))
            expectHDF5Error(["random.h5", "not an HDF5 file", "15 bytes"]) { _ = try HDF5File.open(path) }
        }
    }

    @Test func truncatedFile() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("cut.h5").path
            let file = try HDF5File.create(path)
            try file.write("params/w", doubles: sampleDoubles([64, 64]), shape: [64, 64])
            try file.setStringAttribute("title", "to be truncated")
            try file.close()
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
            expectHDF5Error(["cut.h5", "truncated or corrupt"]) { _ = try HDF5File.open(path) }

            // Cut inside the superblock too.
            try bytes.prefix(40).write(to: URL(fileURLWithPath: path))
            expectHDF5Error(["cut.h5"]) { _ = try HDF5File.open(path) }
        }
    }

    @Test func missingDatasetAndWrongObject() throws {
        try withTempDir { dir in
            let path = dir.appendingPathComponent("obj.h5").path
            let file = try HDF5File.create(path)
            try file.write("g/w", doubles: [1, 2], shape: [2])
            try file.close()
            let reader = try HDF5File.open(path)
            expectHDF5Error(["obj.h5", "'g/nope'", "no such dataset"]) { _ = try reader.read("g/nope") }
            expectHDF5Error(["'x/y/z'", "no such dataset"]) { _ = try reader.info("x/y/z") }
            expectHDF5Error(["'g'", "expected a dataset, found a group"]) { _ = try reader.read("g") }
            expectHDF5Error(["'/'", "no such dataset"]) { _ = try reader.read("/") }
            try reader.close()
            expectHDF5Error(["obj.h5", "closed"]) { _ = try reader.read("g/w") }
            expectHDF5Error(["closed"]) { _ = try reader.datasetPaths() }
            #expect(!reader.exists("g/w"), "a closed file still says g/w exists")
        }
    }

    /// Reading unsupported types (string, enum/bool, compound, empty) names the dataset and its type.
    @Test func unsupportedDatasets() throws {
        let file = try HDF5File.open(try fixtureURL().path)
        expectHDF5Error(["types.h5", "'str_vlen'", "unsupported element type string (variable-length)"]) {
            _ = try file.read("str_vlen")
        }
        expectHDF5Error(["'str_fixed'", "string (fixed-length, 5 bytes)"]) { _ = try file.read("str_fixed") }
        expectHDF5Error(["'bools'", "enum"]) { _ = try file.read("bools") }
        expectHDF5Error(["'compound'", "compound"]) { _ = try file.info("compound") }
        expectHDF5Error(["'empty'", "null dataspace"]) { _ = try file.read("empty") }
    }
}
