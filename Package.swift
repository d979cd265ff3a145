// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "sddit-oracle",
    // Only the command is a product. The targets keep unsafeFlags, which SwiftPM refuses in a
    // package depended on by version, so no library is offered: -cross-module-optimization
    // (SDDiTCore, SDDiTReference) is worth 2.2x on the reference (`oracle dump --backend ref
    // --config S/2 --batch 2 --sample 0` on this project's 2-core machine: 23.5 s with it,
    // 50-58 s without, two runs each), and CRefKernels' -ffp-contract=off gives the reference
    // its bits (the plain loops', no fused multiply-add).
    products: [
        .executable(name: "oracle", targets: ["oracle"]),
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
        // Config, tensors, parameter keys, activation names, tolerances and comparison; Spec/:
        // every formula both backends share (EDM coefficients, sin-cos and timestep tables, the
        // sigma schedule and Heun integrator, patch layouts, init rule, mask and step inputs).
        .target(
            name: "SDDiTCore",
            dependencies: [.product(name: "RealModule", package: "swift-numerics")],
            swiftSettings: [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]),
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
        // Built with bounds and overflow checks like everything else: -Ounchecked bought nothing
        // measurable on `oracle bench` (docs/DECISIONS.md, 39).
        .target(name: "SDDiTFast", dependencies: ["SDDiTCore", "COpenBLAS", "CFastKernels"]),
        // The fast path's element-wise and row-wise loops (GELU, softmax) for AVX-512F / AVX2 /
        // SSE2, picked at load time: the Swift loops' operations in their order, no fused
        // multiply-add (-ffp-contract=off), so the same bits at any vector width.
        .target(name: "CFastKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        // The SPEC §7 exchange layout ("sddit-oracle/1") over HDF5IO: read, validate, write.
        .target(name: "SDDiTExchange", dependencies: ["SDDiTCore", "HDF5IO"]),
        // Backends by name, seeded setups, the tensor-by-tensor diff engine and its calibrated
        // verdicts, the precision scenarios and headroom sweep.
        .target(name: "SDDiTDiff", dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "SDDiTExchange"]),
        // Training on the fast path: synthetic data, the trainer and its checkpoints, quiet-failure
        // monitors, sampling from a checkpoint.
        .target(name: "SDDiTTraining", dependencies: ["SDDiTCore", "SDDiTFast", "SDDiTExchange"]),
        // The regression store, batteries, check and HTML report.
        .target(name: "SDDiTRegress", dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "SDDiTExchange", "SDDiTDiff"]),
        // `oracle bench`: the runner, FLOP counts, the PyTorch peer's ratios.
        .target(name: "SDDiTBench", dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "SDDiTDiff"]),
        .executableTarget(
            name: "oracle",
            dependencies: [
                "SDDiTCore", "SDDiTReference", "SDDiTFast", "SDDiTExchange", "SDDiTDiff", "SDDiTTraining",
                "SDDiTRegress", "SDDiTBench", "h5probe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Helpers every test target shares: paths, running `oracle`, seeded tensors, gradient
        // checks, exchange files, the reports under test-reports/.
        .target(name: "TestSupport", dependencies: ["SDDiTCore", "SDDiTExchange"], path: "Tests/TestSupport"),
        .testTarget(
            name: "SDDiTReferenceTests",
            dependencies: [
                "SDDiTCore", "SDDiTReference", "TestSupport",
                .product(name: "RealModule", package: "swift-numerics"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]),
        // The fast path: its element-wise functions swept, its kernels against the reference's
        // layers, the whole step against the reference, same bits at any thread count.
        .testTarget(
            name: "SDDiTFastTests",
            dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "CFastKernels", "SDDiTExchange", "SDDiTDiff", "SDDiTTraining", "TestSupport", "oracle"]),
        // The diff engine and its verdicts: conformance with the PyTorch fixtures, Float80,
        // calibration, after-step rule, robustness against damaged files.
        .testTarget(
            name: "DiffTests",
            dependencies: ["SDDiTCore", "SDDiTReference", "SDDiTFast", "SDDiTExchange", "SDDiTDiff", "HDF5IO", "TestSupport", "oracle", "h5probe"]),
        .testTarget(
            name: "TrainingTests",
            dependencies: ["SDDiTCore", "SDDiTFast", "SDDiTExchange", "SDDiTDiff", "SDDiTTraining", "TestSupport", "oracle"]),
        .testTarget(name: "RegressTests", dependencies: ["SDDiTCore", "SDDiTRegress", "TestSupport", "oracle"]),
        // The command line, the Python tools, and the docs (named paths exist, quoted limits are the code's).
        .testTarget(name: "OracleTests", dependencies: ["SDDiTCore", "SDDiTExchange", "SDDiTDiff", "SDDiTBench", "TestSupport", "oracle", "h5probe"]),
        .testTarget(
            name: "HDF5IOTests",
            dependencies: ["HDF5IO", "h5probe"],
            // types.h5: an h5py-written file (see make_fixtures.py), so type coverage needs no Python.
            resources: [.copy("Fixtures")]),
    ]
)
