// One training step's inputs (SPEC §7 /inputs) and the mask's rule (SPEC §2.4).

/// The inputs of one training step (SPEC §7 /inputs).
public struct StepInputs<T: RefScalar>: Sendable {
    public var x0: Tensor<T>          // [N, C, H, W]
    public var labels: [Int]          // [N]
    public var sigmaS: [T]            // [N]
    public var noiseS: Tensor<T>      // [N, C, H, W], unit noise
    public var noiseT: Tensor<T>      // [N, C, H, W], unit noise
    public var mask: [[Int]]          // [N][T], 1 = hidden
    public var centerCls: Tensor<T>   // [K]
    public var centerPatch: Tensor<T> // [K]
    public var step: Int = 0

    public init(x0: Tensor<T>, labels: [Int], sigmaS: [T], noiseS: Tensor<T>, noiseT: Tensor<T>,
                mask: [[Int]], centerCls: Tensor<T>, centerPatch: Tensor<T>, step: Int = 0) {
        self.x0 = x0; self.labels = labels; self.sigmaS = sigmaS; self.noiseS = noiseS
        self.noiseT = noiseT; self.mask = mask; self.centerCls = centerCls
        self.centerPatch = centerPatch; self.step = step
    }

    public func converted<U: RefScalar>(to: U.Type = U.self) -> StepInputs<U> {
        StepInputs<U>(x0: x0.converted(), labels: labels, sigmaS: sigmaS.map { U($0) },
                      noiseS: noiseS.converted(), noiseT: noiseT.converted(), mask: mask,
                      centerCls: centerCls.converted(), centerPatch: centerPatch.converted(), step: step)
    }
}

public struct MaskError: Error, CustomStringConvertible { public let description: String }

/// Visible token indices per sample, ascending (SPEC §2.4 Decision); every row must keep
/// the same number V of visible tokens.
public func visibleIndices(mask: [[Int]], tokens: Int, batch: Int? = nil) throws -> [[Int]] {
    if let N = batch, mask.count != N {
        throw MaskError(description: "mask has \(mask.count) rows, expected one per sample (N = \(N))")
    }
    guard !mask.isEmpty else { throw MaskError(description: "mask has no rows") }
    var keep: [[Int]] = []
    for (n, row) in mask.enumerated() {
        guard row.count == tokens else {
            throw MaskError(description: "mask row \(n) has \(row.count) entries, expected T = \(tokens)")
        }
        if let bad = row.first(where: { $0 != 0 && $0 != 1 }) {
            throw MaskError(description: "mask row \(n) holds \(bad); entries must be 0 (visible) or 1 (hidden)")
        }
        keep.append(row.indices.filter { row[$0] == 0 })
        if keep[n].count != keep[0].count {
            throw MaskError(description: "mask row \(n) keeps \(keep[n].count) visible tokens, row 0 keeps \(keep[0].count); every sample must keep the same V")
        }
        if keep[n].isEmpty { throw MaskError(description: "mask row \(n) hides every token") }
    }
    return keep
}
