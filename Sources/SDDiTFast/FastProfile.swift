import Glibc
import SDDiTCore

/// Where the fast SD-DiT training step spends its time (`oracle bench --profile`): each
/// building block and kernel timed alone at the shapes of the step (best of `reps`), and
/// multiplied by how often one step runs it. Runs on its own model's buffers ("prof.*");
/// its AdamW / EMA calls change that model's parameters (not a model being benchmarked).
public struct ProfileEntry: Sendable {
    public var group: String, name: String
    /// Best time of one call (ms) and calls per training step.
    public var ms: Double, perStep: Int
    public var stepMs: Double { ms * Double(perStep) }
}

extension FastModel {
    public func profileTrainStep(batch N: Int, maskRatio: Double, reps: Int = 3) throws -> [ProfileEntry] {
        let D = cfg.hiddenSize, Dd = cfg.decoderHiddenSize, V = cfg.visibleCount(maskRatio: maskRatio), T = cfg.tokens
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
        let siluC = ws.get("prof.siluC", [N, D]); fill(siluC)
        let dsiluC = ws.get("prof.dsiluC", [N, D], zero: true)
        // one block of each kind: whole forward / backward, then its kernels one by one
        // group, parameter key, L, W, heads, MLP hidden, calls per step
        let kinds: [(String, String, Int, Int, Int, Int, Int)] = [
            ("student encoder block", "blocks.0.", 1 + V, D, cfg.numHeads, cfg.mlpHidden, cfg.depth),
            ("decoder block", "decoder_blocks.0.", T, Dd, cfg.decoderNumHeads, cfg.decoderMlpHidden, cfg.decoderDepth),
            ("teacher encoder block", "blocks.0.", 1 + T, D, cfg.numHeads, cfg.mlpHidden, cfg.depth),
        ]
        for (group, key, L, W, H, hm, count) in kinds {
            let name = "prof." + group
            let x = ws.get(name + ".in", [N, L, W]); fill(x)
            let block = FastDiTBlock(name: name, key: key, heads: H)
            out.append(ProfileEntry(group: group, name: "whole block forward", ms: try best { _ = try block.forward(self, student, x, siluC) }, perStep: count))
            let backward = group != "teacher encoder block"
            if backward {
                let dy = ws.get(name + ".dy", [N, L, W]); fill(dy, 1e-3)
                out.append(ProfileEntry(group: group, name: "whole block backward", ms: try best {
                    _ = try block.backward(self, student, grads, dy: dy, dsiluC: dsiluC) }, perStep: count))
            }
            // kernels of the block, forward (on the buffers its forward left)
            guard let sv = block.saved else { fatalError("profile: the block's forward left no buffers") }
            let (mod, m1, mean1, rstd1, qkv, probs) = (sv.mod, sv.m1, sv.mean1, sv.rstd1, sv.qkv, sv.probs)
            let (a, proj, x1, f1, gl, f2) = (sv.a, sv.proj, sv.x1, sv.f1, sv.gl, sv.f2)
            let P = student
            func e(_ n: String, _ c: Int = count, _ body: () -> Void) { out.append(ProfileEntry(group: group, name: n, ms: best(body), perStep: c)) }
            e("fwd adaLN Linear") { k.linear(siluC, P[key + "adaLN_modulation.1.weight"]!, P[key + "adaLN_modulation.1.bias"]!, mod) }
            e("fwd LN + modulate", 2 * count) { k.lnModulate(x, mod, shiftChunk: 0, scaleChunk: 1, chunks: 6, m1, mean: mean1, rstd: rstd1) }
            e("fwd qkv Linear") { k.linear(m1, P[key + "attn.qkv.weight"]!, P[key + "attn.qkv.bias"]!, qkv) }
            e("fwd attention q k^T (sgemm per sample, head)") { k.attentionLogits(qkv, heads: H, probs) }
            let saved = ws.get(name + ".probs.saved", [N, H, L, L]); saved.p.update(from: probs.p, count: probs.count)
            e("fwd softmax") { probs.p.update(from: saved.p, count: saved.count); k.softmaxRows(probs) }
            e("fwd attention P v (sgemm per sample, head)") { k.attentionOutput(qkv, heads: H, probs, a) }
            e("fwd proj Linear") { k.linear(a, P[key + "attn.proj.weight"]!, P[key + "attn.proj.bias"]!, proj) }
            e("fwd gated residual", 2 * count) { k.gatedResidual(x, mod, chunk: 2, chunks: 6, proj, x1) }
            e("fwd fc1 Linear") { k.linear(m1, P[key + "mlp.fc1.weight"]!, P[key + "mlp.fc1.bias"]!, f1) }
            e("fwd GELU tanh") { k.geluTanh(f1, gl) }
            e("fwd fc2 Linear") { k.linear(gl, P[key + "mlp.fc2.weight"]!, P[key + "mlp.fc2.bias"]!, f2) }
            guard backward else { continue }
            let g = grads
            let dW = ws.get(name + ".dW", [N, L, W]); fill(dW, 1e-3)
            let dH = ws.get(name + ".dH", [N, L, hm]); fill(dH, 1e-3)
            let d3 = ws.get(name + ".d3", [N, L, 3 * W]); fill(d3, 1e-3)
            let dx = ws.get(name + ".dx", [N, L, W]), dxh = ws.get(name + ".dxh", [N, L, hm])
            let dmod = ws.get(name + ".dmod", [N, 6 * W]), dqkv = ws.get(name + ".dqkv", [N, L, 3 * W])
            e("bwd fc2 Linear (dx, dW, db)") { k.linearBackward(dW, gl, P[key + "mlp.fc2.weight"]!, dx: dxh, dw: g[key + "mlp.fc2.weight"], db: g[key + "mlp.fc2.bias"]) }
            e("bwd GELU tanh") { k.geluTanhBackward(dH, f1, dxh) }
            e("bwd fc1 Linear") { k.linearBackward(dH, m1, P[key + "mlp.fc1.weight"]!, dx: dx, dw: g[key + "mlp.fc1.weight"], db: g[key + "mlp.fc1.bias"]) }
            e("bwd LN + modulate", 2 * count) { k.lnModulateBackward(dW, x, mod, shiftChunk: 0, scaleChunk: 1, chunks: 6, mean: mean1, rstd: rstd1, dx: dx, dmod: dmod) }
            e("bwd gated residual", 2 * count) { k.gatedResidualBackward(dW, mod, chunk: 2, chunks: 6, proj, dh: dx, dmod: dmod) }
            e("bwd proj Linear") { k.linearBackward(dW, a, P[key + "attn.proj.weight"]!, dx: dx, dw: g[key + "attn.proj.weight"], db: g[key + "attn.proj.bias"]) }
            e("bwd attention (4 sgemm per sample, head + softmax bwd)") { k.attentionBackward(dW, qkv, heads: H, probs, dqkv: dqkv) }
            e("bwd qkv Linear") { k.linearBackward(d3, m1, P[key + "attn.qkv.weight"]!, dx: dx, dw: g[key + "attn.qkv.weight"], db: g[key + "attn.qkv.bias"]) }
            e("bwd adaLN Linear") { k.linearBackward(dmod, siluC, P[key + "adaLN_modulation.1.weight"]!, dx: dsiluC, dw: g[key + "adaLN_modulation.1.weight"], db: g[key + "adaLN_modulation.1.bias"]) }
        }
        // heads (student rows = teacher rows = N (1 + V))
        let hx = ws.get("prof.head.x", [N * (1 + V), D]); fill(hx)
        let head = FastProjectionHead(branch: "prof")
        out.append(ProfileEntry(group: "DINO head", name: "forward", ms: try best { _ = try head.forward(self, student, hx) }, perStep: 2))
        let dOut = ws.get("prof.head.dout", [N * (1 + V), cfg.headOutDim]); fill(dOut, 1e-4)
        out.append(ProfileEntry(group: "DINO head", name: "backward", ms: try best { _ = try head.backward(self, student, grads, dOut: dOut) }, perStep: 1))
        out.append(ProfileEntry(group: "optimizer", name: "AdamW (all student parameters)", ms: best { adamW() }, perStep: 1))
        out.append(ProfileEntry(group: "optimizer", name: "EMA (teacher)", ms: best { ema(0.996) }, perStep: 1))
        // FastStep's own loops, timed alone on this model's buffers (the functions the step calls)
        let gtot = grads.values.reduce(0) { $0 + $1.count }
        out.append(ProfileEntry(group: "FastStep loops", name: "zero all \(gtot) gradient entries", ms: best {
            for g in grads.values { g.zero() } }, perStep: 1))
        out.append(ProfileEntry(group: "FastStep loops", name: "unscale (skipped at scale 1) + finite check of the gradients", ms: best {
            if unscaleGradients(1) != nil { print("non-finite") } }, perStep: 1))
        let K = cfg.headOutDim, R = N * (1 + V)
        let tOut = ws.get("prof.dino.t", [R, K]), sOut = ws.get("prof.dino.s", [R, K]); fill(tOut, 0.2); fill(sOut, 0.2)
        let dHead = ws.get("prof.dino.d", [R, K])
        if centerCls.isEmpty { centerCls = Array(repeating: 0, count: K); centerPatch = centerCls }
        out.append(ProfileEntry(group: "FastStep loops", name: "DINO cross-entropy + gradient, \(R) rows x \(K)", ms: best {
            let h = dinoRows(t: tOut.p, s: sOut.p, N: N, V: V, K: K, tauT: Float(cfg.tauT), tauS: Float(cfg.tauS), gradScale: 1, dOut: dHead.p)
            if h[0].isNaN { print("nan") }
        }, perStep: 1))
        return out
    }
}
