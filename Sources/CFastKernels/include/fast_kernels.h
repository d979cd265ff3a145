#ifndef SDDIT_FAST_KERNELS_H
#define SDDIT_FAST_KERNELS_H

// The fast path's element-wise and row-wise float32 loops in C, vectorized for AVX-512F,
// AVX2 or SSE2 (picked once at load time). Each computes exactly what its Swift loop in
// SDDiTFast/Kernels computes (the same operations in the same order, one rounding each, no
// fused multiply-add): only the vector width differs, so the bits are the same on every
// instruction set. Ranges are [lo, hi) of elements or rows; the caller splits them over threads.

/// y[i] = v / (1 + exp(-2c (v + a v^3))), v = x[i] (GELU, tanh form)
void sddit_fast_gelu_tanh(const float *x, float *y, long lo, long hi);
/// dx[i] = dy[i] (s + 2 v s (1 - s) c (1 + 3 a v^2)), s = 1 / (1 + exp(-2c (v + a v^3)))
void sddit_fast_gelu_tanh_backward(const float *dy, const float *x, float *dx, long lo, long hi);
/// y[i] = 0.5 v (1 + erf(v / sqrt 2))
void sddit_fast_gelu_erf(const float *x, float *y, long lo, long hi);
/// dx[i] = dy[i] (0.5 (1 + erf(v / sqrt 2)) + v exp(-v^2 / 2) / sqrt(2 pi))
void sddit_fast_gelu_erf_backward(const float *dy, const float *x, float *dx, long lo, long hi);
/// Rows lo..<hi of p [rows, L]: p = exp(p - max) / sum, in place.
void sddit_fast_softmax_rows(float *p, long L, long lo, long hi);
/// Rows lo..<hi: ds = p (ds - sum_j ds p) (softmax backward, in place in ds).
void sddit_fast_softmax_backward_rows(float *ds, const float *p, long L, long lo, long hi);
/// AdamW on elements lo..<hi, with h = {1 - lr wd, b1, a1, b2, a2, lr / bc1, bc2, eps} (a1, a2:
/// the moments' alphas; bc1, bc2 the bias corrections, bc2 already a square root):
///   p *= 1 - lr wd;  m = b1 m + a1 g;  v = b2 v + a2 g g;  p -= (lr / bc1) m / (sqrt(v) / bc2 + eps)
/// m and v are read and written when not NULL (both), else start from zero and are not kept.
void sddit_fast_adamw(float *p, const float *g, float *m, float *v, const float *h, long lo, long hi);

/// Scalar exp and erf exactly as the vector loops compute them (for tests).
float sddit_fast_exp(float x);
float sddit_fast_erf(float x);
/// The instruction set in use: "avx512f", "avx2" or "sse2"; sddit_fast_set_isa picks one the
/// CPU has (returns 0, changing nothing, otherwise). Not for use while kernels run.
const char *sddit_fast_isa(void);
int sddit_fast_set_isa(const char *name);

#endif
