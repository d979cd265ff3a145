import SDDiTCore

// The call shapes FastProfile.swift times (one block and one head at the step's shapes),
// over the layer types: a block by name keeps its layer (and so its forward's buffers)
// for the backward of the same name.
extension FastModel {
    typealias HeadState = FastDINOHead

    /// One adaLN-Zero block's forward under `name` (FastDiTBlock).
    func block(_ name: String, _ key: String, _ P: [String: FT], _ x: FT, _ siluC: FT, heads: Int) throws -> FT {
        let b = FastDiTBlock(name: name, key: key, heads: heads)
        profiledBlocks[name] = b
        return try b.forward(self, P, x, siluC)
    }

    /// The backward of the last `block(name, ...)`: it reads that forward's x and SiLU(c)
    /// (the block's saved buffers; `x` and `siluC` are FastProfile's same tensors).
    func blockBackward(_ name: String, _ key: String, _ P: [String: FT], x: FT, siluC: FT, dy: FT, dsiluC: FT, heads: Int) throws -> FT {
        guard let b = profiledBlocks[name], b.key == key, b.heads == heads else { fatalError("blockBackward \(name): no forward of that block") }
        return try b.backward(self, P, grads, dy: dy, dsiluC: dsiluC)
    }

    /// A DINO head's forward over rows x under branch `pre`.
    func head(_ pre: String, _ P: [String: FT], _ x: FT) throws -> HeadState {
        let h = FastDINOHead(branch: pre)
        _ = try h.forward(self, P, x)
        return h
    }

    func headBackward(_ pre: String, _ P: [String: FT], _ h: HeadState, dOut: FT) throws -> FT {
        try h.backward(self, P, grads, dOut: dOut)
    }
}
