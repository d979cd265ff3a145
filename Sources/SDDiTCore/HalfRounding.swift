// Rounding float32 to the narrower types, ties to even, kept in a Float: what the fast path
// stores in its half modes, and what the verdict checks a file's values against (a tensor
// whose values all survive the rounding was stored in that type).

/// float32 to the nearest fp16 value.
@inlinable @inline(__always) public func roundFP16(_ x: Float) -> Float { Float(Float16(x)) }

/// float32 to TF32 (10 mantissa bits, float32's exponent).
@inlinable @inline(__always) public func roundTF32(_ x: Float) -> Float {
    if x.isNaN || x.isInfinite { return x }
    let b = x.bitPattern
    let r = b &+ 0x0FFF &+ ((b >> 13) & 1)
    return Float(bitPattern: r & 0xFFFF_E000)
}

/// float32 to bfloat16 (8 significant bits, float32's exponent).
@inlinable @inline(__always) public func roundBF16(_ x: Float) -> Float {
    if x.isNaN { return x }
    let b = x.bitPattern
    let r = b &+ 0x7FFF &+ ((b >> 16) & 1)
    return Float(bitPattern: r & 0xFFFF_0000)
}
