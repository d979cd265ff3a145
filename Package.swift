// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "sddit-oracle",
    products: [
        .executable(name: "oracle", targets: ["oracle"]),
        .library(name: "SDDiTReference", targets: ["SDDiTReference"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // System HDF5 (Debian: libhdf5-dev). Include and library paths come from `pkg-config hdf5`;
        // shim.h wraps HDF5's macro constants as functions Swift can call.
        .systemLibrary(
            name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        // Reads a whole HDF5 file in its own process: HDF5IO runs it first, so that a corrupt
        // file that crashes the HDF5 C library cannot crash the caller.
        .executableTarget(name: "h5probe", dependencies: ["CHDF5"]),
        // float64 / float32 / integer datasets of any rank, groups, attributes; atomic writes.
        .target(name: "HDF5IO", dependencies: ["CHDF5"]),
        // Config, tensors, parameter keys, activation names, tolerances and comparison.
        .target(
            name: "SDDiTCore",
            dependencies: [.product(name: "RealModule", package: "swift-numerics")]),
        // The reference's product kernel (8 x 8 Double sums, AVX-512F / AVX2 / SSE2 picked at
        // load time): no fused multiply-add (-ffp-contract=off), so the plain loops' exact bits.
        .target(name: "CRefKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        // The float64 truth: plain loops generic over `Real` (Double, Float80), and for Double
        // kernels with the same bits (Kernels/); no BLAS.
        .target(
            name: "SDDiTReference",
            dependencies: ["SDDiTCore", "CRefKernels", .product(name: "RealModule", package: "swift-numerics")],
            // Generic code is specialized for Double / Float80 in its callers' modules too
            // (without it every arithmetic op of a cross-module call goes through witness tables).
            swiftSettings: [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]),
        // OpenBLAS (Debian: libopenblas-dev), for the fast path's sgemm.
        .systemLibrary(
            name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        // The float32 / mixed-precision fast path: OpenBLAS sgemm, fused loops, reused buffers.
        .target(
            name: "SDDiTFast",
            dependencies: ["SDDiTCore", "COpenBLAS"],
            swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        // The SPEC §7 exchange layout ("sddit-oracle/1") over HDF5IO: load, validate, save.
        .target(name: "SDDiTExchange", dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "HDF5IO"]),
        .executableTarget(
            name: "oracle",
            dependencies: [
                "SDDiTCore", "SDDiTReference", "SDDiTExchange", "h5probe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(
            name: "SDDiTReferenceTests",
            dependencies: [
                "SDDiTCore", "SDDiTReference",
                .product(name: "RealModule", package: "swift-numerics"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]),
        .testTarget(
            name: "OracleTests",
            dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTExchange", "HDF5IO", "oracle", "h5probe"]),
        // The fast path's element-wise functions swept against independent definitions.
        .testTarget(name: "SDDiTFastTests", dependencies: ["SDDiTFast"]),
        .testTarget(
            name: "HDF5IOTests",
            dependencies: ["HDF5IO", "h5probe"],
            // types.h5: an h5py-written file (see make_fixtures.py), so type coverage needs no Python.
            resources: [.copy("Fixtures")]),
    ]
)
