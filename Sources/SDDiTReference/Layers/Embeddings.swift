import RealModule

// The label table embedding (SPEC §2.3). The fixed tables (sin-cos, timestep frequencies)
// are Core's Spec/Embeddings.swift.

/// Label embedding (SPEC §2.3): y [N] -> table[y] [N, D]; row num_classes is the null label.
public enum LabelEmbedding {
    public static func forward<T: RefScalar>(_ labels: [Int], table: Tensor<T>) -> Tensor<T> {
        let D = table.lastDim
        var out = [T](); out.reserveCapacity(labels.count * D)
        for y in labels { out += table.data[(y * D)..<((y + 1) * D)] }
        return Tensor(shape: [labels.count, D], data: out)
    }
    /// dtable[y_n] += dy[n]
    public static func backward<T: RefScalar>(dy: Tensor<T>, labels: [Int], dtable: inout Tensor<T>) {
        let D = dy.lastDim
        for (n, y) in labels.enumerated() { for i in 0..<D { dtable.data[y * D + i] += dy.data[n * D + i] } }
    }
}
