import Foundation
import SDDiTCore

// A run's setup (config, parameters, inputs, sampler start) to and from the SPEC §7 datasets.

extension ExchangeFile {
    /// The setup a backend needs to reproduce this file.
    public func runSetup() throws -> RunSetup {
        let cfg = config
        guard has(group: "params") else { throw fail("group /params is missing: a backend needs the student parameters") }
        let student = try parameters("params", cfg.studentParameters)
        var s = RunSetup(config: cfg, student: student)
        if hasTrainingStep {
            guard has(group: "teacher") else { throw fail("group /teacher is missing: a training step needs the teacher") }
            s.teacher = try parameters("teacher", cfg.teacherParameters)
            s.inputs = try stepInputs()
        }
        if hasSampler { s.sampler = try samplerSetup() }
        if s.inputs == nil && s.sampler == nil {
            throw fail("neither /inputs nor /sampler/x_init: nothing for a backend to run")
        }
        return s
    }

    /// Paths that configure a run rather than record its results.
    public static func isSetup(_ p: String) -> Bool {
        p.hasPrefix("params/") && p != "params/pos_embed" && p != "params/decoder_pos_embed"
            || p.hasPrefix("teacher/") || p.hasPrefix("inputs/") || p == "sampler/x_init" || p == "sampler/labels"
    }
}

/// The datasets of a setup as a file records them (for `oracle dump`).
public func setupDatasets(_ s: RunSetup) -> (floats: [String: NamedTensor], ints: [String: ([Int64], [Int])]) {
    var f: [String: NamedTensor] = [:], i: [String: ([Int64], [Int])] = [:]
    for (k, v) in s.student.tensors { f["params/" + k] = v.named() }
    if let t = s.teacher { for (k, v) in t.tensors { f["teacher/" + k] = v.named() } }
    if let I = s.inputs {
        let N = I.labels.count
        f["inputs/x0"] = I.x0.named(); f["inputs/noise_s"] = I.noiseS.named(); f["inputs/noise_t"] = I.noiseT.named()
        f["inputs/sigma_s"] = Tensor(shape: [N], data: I.sigmaS).named()
        f["inputs/center_cls"] = I.centerCls.named(); f["inputs/center_patch"] = I.centerPatch.named()
        i["inputs/labels"] = (I.labels.map { Int64($0) }, [N])
        i["inputs/mask"] = (I.mask.flatMap { $0 }.map { Int64($0) }, [N, s.config.tokens])
        i["inputs/step"] = ([Int64(I.step)], [])
    }
    if let sm = s.sampler {
        f["sampler/x_init"] = sm.xInit.named()
        i["sampler/labels"] = (sm.labels.map { Int64($0) }, [sm.labels.count])
    }
    return (f, i)
}
