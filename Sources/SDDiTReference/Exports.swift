// The reference's callers see Core's types (Tensor, ModelConfig, the spec formulas) too.
@_exported import SDDiTCore
