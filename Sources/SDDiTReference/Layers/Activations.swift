import RealModule

// Element-wise nonlinearities (SPEC §2.3, §2.6, §4). y = f(x); dx += f'(x) dy. Each element
// by the same expression, spread over the cores (Kernels/Elementwise.swift).

/// SiLU(x) = x sigmoid(x); f' = s (1 + x (1 - s)).
public enum SiLU {
    public static func forward<T: RefScalar>(_ x: Tensor<T>) -> Tensor<T> {
        x.elementwise { $0 / (1 + T.exp(-$0)) }
    }
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dx: inout Tensor<T>) {
        accumulateElementwise(dy: dy, x: x, dx: &dx) { g, v in
            let s = 1 / (1 + T.exp(-v))
            return g * s * (1 + v * (1 - s))
        }
    }
}

/// GELU, tanh approximation (DiT's MLP): 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3).
public enum GELUTanh {
    @inline(__always) static func k<T: RefScalar>(_: T.Type) -> T { (2 / T.pi).squareRoot() }
    public static func forward<T: RefScalar>(_ x: Tensor<T>) -> Tensor<T> {
        let c = k(T.self), a = T(0.044715)
        return x.elementwise { v in
            let u: T = c * (v + a * v * v * v)
            return v / 2 * (1 + T.tanh(u))
        }
    }
    /// f' = (1 + t)/2 + x (1 - t^2)/2 * sqrt(2/pi)(1 + 3 * 0.044715 x^2)
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dx: inout Tensor<T>) {
        let c = k(T.self), a = T(0.044715)
        accumulateElementwise(dy: dy, x: x, dx: &dx) { g, v in
            let u: T = c * (v + a * v * v * v), t = T.tanh(u)
            let du: T = c * (1 + 3 * a * v * v)
            let d: T = (1 + t) / 2 + v * (1 - t * t) / 2 * du
            return g * d
        }
    }
}

/// GELU, exact (DINO head): 0.5 x (1 + erf(x / sqrt 2)); f' = Phi(x) + x phi(x).
public enum GELUErf {
    public static func forward<T: RefScalar>(_ x: Tensor<T>) -> Tensor<T> {
        let r = 1 / T(2).squareRoot()
        return x.elementwise { v in v / 2 * (1 + T.erf(v * r)) }
    }
    public static func backward<T: RefScalar>(dy: Tensor<T>, x: Tensor<T>, dx: inout Tensor<T>) {
        let r = 1 / T(2).squareRoot(), n = 1 / (2 * T.pi).squareRoot()
        accumulateElementwise(dy: dy, x: x, dx: &dx) { g, v in
            let d = (1 + T.erf(v * r)) / 2 + v * n * T.exp(-v * v / 2)
            return g * d
        }
    }
}
