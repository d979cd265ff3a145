// A named nn.Linear of the model: forward and backward against the stores.
struct LinearLayer {
    let key: String   // e.g. "blocks.0.attn.qkv"

    func forward<T: RefScalar>(_ x: Tensor<T>, _ P: Parameters<T>) -> Tensor<T> {
        Linear.forward(x, weight: P[key + ".weight"], bias: P.tensors[key + ".bias"])
    }

    /// dW, db += ... into `grads` (skipped when nil: a no-grad branch).
    func backwardParams<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, grads: Gradients<T>?) {
        guard let g = grads else { return }
        let bias = g.boxes[key + ".bias"]
        var db: Tensor<T>? = bias?.value
        bias?.value = .zeros([0])          // release the box's copy so `db` mutates in place
        Linear.backwardParams(dy: dy, x: x, dw: &g[key + ".weight"].value, db: &db)
        if let db { bias?.value = db }
    }

    /// Parameter gradients, and dx += dy W.
    func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, _ P: Parameters<T>,
                                grads: Gradients<T>?, dx: inout Tensor<T>) {
        backwardParams(dy: dy, x: x, grads: grads)
        Linear.backwardInput(dy: dy, weight: P[key + ".weight"], dx: &dx)
    }
}
