import Glibc
import SDDiTCore

/// Where the fast SD-DiT training step spends its time (`oracle bench --profile`): each
/// layer and each of a block's kernel steps timed alone at the shapes of the step (best of
/// `reps`), and multiplied by how often one step runs it. The blocks' kernels are the
/// blocks' own step lists (`FastDiTBlock.forwardSteps` / `backwardSteps`), not a copy. Runs on
/// its own layers and buffers ("prof.*"); its AdamW and EMA calls change this model's
/// parameters (not a model being benchmarked).
public struct ProfileEntry: Sendable {
    public var group: String, name: String
    /// Best time of one call (ms) and calls per training step.
    public var ms: Double, perStep: Int
    public var stepMs: Double { ms * Double(perStep) }
}

extension FastModel {
    public func profileTrainStep(batch N: Int, maskRatio: Double, reps: Int = 3) throws -> [ProfileEntry] {
        let D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize, V = cfg.visibleCount(maskRatio: maskRatio), T = cfg.tokens
        let ws = ctx.ws
        var out: [ProfileEntry] = []
        var seed: UInt32 = 12345
        func fill(_ t: FT, _ a: Float = 1) {
            for i in 0..<t.count { seed = seed &* 1664525 &+ 1013904223; t.p[i] = a * (Float(seed >> 8) / Float(1 << 24) - 0.5) }
        }
        func best(_ body: () throws -> Void) rethrows -> Double {
            try body()
            var b = Double.infinity
            for _ in 0..<max(reps, 1) {
                var t0 = timespec(), t1 = timespec()
                clock_gettime(CLOCK_MONOTONIC, &t0); try body(); clock_gettime(CLOCK_MONOTONIC, &t1)
                b = min(b, Double(t1.tv_sec - t0.tv_sec) * 1e3 + Double(t1.tv_nsec - t0.tv_nsec) * 1e-6)
            }
            return b
        }
        func entry(_ group: String, _ name: String, _ perStep: Int, _ body: () throws -> Void) rethrows {
            out.append(ProfileEntry(group: group, name: name, ms: try best(body), perStep: perStep))
        }
        let siluC = ws.get("prof.siluC", [N, D]); fill(siluC)
        let dsiluC = ws.get("prof.dsiluC", [N, D], zero: true)
        // one block of each kind: whole forward / backward, then its kernel steps one by one
        // (group, parameter key, tokens L, width W, heads, calls per step)
        let kinds: [(String, String, Int, Int, Int, Int)] = [
            ("student encoder block", "blocks.0.", 1 + V, D, cfg.numHeads, cfg.depth),
            ("decoder block", "decoder_blocks.0.", T, Dd, cfg.decoderNumHeads, cfg.decoderDepth),
            ("teacher encoder block", "blocks.0.", 1 + T, D, cfg.numHeads, cfg.depth),
        ]
        for (group, key, L, W, H, count) in kinds {
            let name = "prof." + group
            let x = ws.get(name + ".in", [N, L, W]); fill(x)
            let block = FastDiTBlock(name: name, key: key, heads: H)
            block.bind(student, gradients: grads)
            try entry(group, "whole block forward", count) { _ = try block.forward(ctx, x, siluC) }
            let backward = group != "teacher encoder block"
            let dy = ws.get(name + ".dy", [N, L, W]); fill(dy, 1e-3)
            if backward { try entry(group, "whole block backward", count) { _ = try block.backward(ctx, dy: dy, dsiluC: dsiluC) } }
            // the kernel steps, on the buffers the whole forward (backward) left
            for s in block.forwardSteps(ctx, x, siluC).steps { try entry(group, s.name, count, s.run) }
            guard backward else { continue }
            for s in block.backwardSteps(ctx, dy: dy, dsiluC: dsiluC).steps { try entry(group, s.name, count, s.run) }
        }
        // heads (student rows = teacher rows = N (1 + V))
        let hx = ws.get("prof.head.x", [N * (1 + V), D]); fill(hx)
        let head = FastProjectionHead(branch: "prof")
        head.bind(student, gradients: grads)
        try entry("DINO head", "forward", 2) { _ = try head.forward(ctx, hx) }
        let dOut = ws.get("prof.head.dout", [N * (1 + V), cfg.headOutDim]); fill(dOut, 1e-4)
        try entry("DINO head", "backward", 1) { _ = try head.backward(ctx, dOut: dOut) }
        // the step's parts (Step/, Layers/FastEDMLoss.swift, Layers/FastDINOLoss.swift)
        if let adam { entry("optimizer", "AdamW (all student parameters)", 1) { adam.update(ctx, params: student, grads: grads) } }
        entry("optimizer", "EMA (teacher)", 1) {
            for (key, t) in teacher { FastEMA.blend(ctx, teacher: t, student: student.tensor(key), beta: 0.996) }
        }
        let gtot = grads.values.reduce(0) { $0 + $1.count }
        entry("step loops", "zero all \(gtot) gradient entries", 1) { for g in grads.values { g.zero() } }
        entry("step loops", "unscale (skipped at scale 1) + finite check of the gradients", 1) {
            if FastUnscale.apply(ctx, grads, keys: trainableKeys, scale: 1) != nil { print("non-finite") }
        }
        let img = ws.get("prof.D", [N, cfg.inChannels, cfg.inputSize, cfg.inputSize]); fill(img)
        let dImg = ws.get("prof.dD", img.shape), x0 = [Double](repeating: 0.1, count: img.count)
        let lam = [Float](repeating: 1, count: N)
        entry("step loops", "EDM loss + gradient", 1) {
            if FastEDMLoss.forward(D: img, x0: x0, lambda: lam).isNaN { print("nan") }
            FastEDMLoss.backward(D: img, x0: x0, lambda: lam, scale: 1, dD: dImg)
        }
        let K = cfg.headOutDim, R = N * (1 + V)
        let tOut = ws.get("prof.dino.t", [R, K]), sOut = ws.get("prof.dino.s", [R, K]); fill(tOut, 0.2); fill(sOut, 0.2)
        let dHead = ws.get("prof.dino.d", [R, K])
        let centers = FastCenters(cls: Array(repeating: 0, count: K), patch: Array(repeating: 0, count: K))
        entry("step loops", "DINO cross-entropy + gradient, \(R) rows x \(K)", 1) {
            let r = FastDINOLoss.forwardBackward(t: tOut, s: sOut, N: N, V: V, centers: centers, tauT: Float(cfg.tauT), tauS: Float(cfg.tauS),
                                                 gradScale: 1, dOut: dHead)
            if r.cls.isNaN { print("nan") }
        }
        return out
    }
}
