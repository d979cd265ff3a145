// See fast_kernels.h. Built with -ffp-contract=off: every multiply and add is rounded on its
// own, as Swift computes them. The loops are written once (as scalar code over one element or
// one row) and compiled three times with different target attributes; the compiler vectorizes
// across elements, never across a sum (the reductions keep their explicit partial sums).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fast_kernels.h"

static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// Swift's vexp (ElementwiseMath.swift): Cephes' expf, Cody-Waite reduction, degree-6 polynomial.
static inline __attribute__((always_inline)) float vexp(float x0) {
    float x = -87.33f >= x0 ? -87.33f : x0;   // Swift.max(x0, -87.33) (y >= x ? y : x)
    x = 88.0f < x ? 88.0f : x;                // Swift.min(x, 88) (y < x ? y : x)
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * z + r + 1.0f;
    float scale = bits_to_float((float_to_bits(t) << 23) + 0x3F800000u);
    float y = e * scale;
    return x0 < -87.33f ? 0.0f : (x0 != x0 ? x0 : y);
}

// Swift's verf: N. Juffa's erff.
static inline __attribute__((always_inline)) float verf(float a) {
    float t = __builtin_fabsf(a), s = a * a;
    float r = -1.72853470e-5f * t + 3.83197126e-4f;
    float u = -3.88396438e-3f * t + 2.42546219e-2f;
    r = r * s + u;
    r = r * t - 1.06777877e-1f;
    r = r * t - 6.34846687e-1f;
    r = r * t - 1.28717512e-1f;
    r = r * t - t;
    float big = 1.0f - vexp(r);
    float q = -5.96761703e-4f;
    q = q * s + 4.99119423e-3f;
    q = q * s - 2.67681349e-2f;
    q = q * s + 1.12819925e-1f;
    q = q * s - 3.76125336e-1f;
    q = q * s + 1.28379166e-1f;
    float small = q * a + a;
    return t >= 0.921875f ? (a < 0 ? -big : big) : small;
}

// Swift's vsum / vdot: 16 partial sums (four 4-lane vectors a0..a3, lane j mod 16), combined
// as ((a0 + a1) + (a2 + a3)) and then its 4 lanes in order; the tail added one by one.
static inline __attribute__((always_inline)) float combine16(const float *a) {
    float v[4];
    for (int l = 0; l < 4; l++) v[l] = (a[l] + a[4 + l]) + (a[8 + l] + a[12 + l]);
    float s = -0.0f;
    for (int l = 0; l < 4; l++) s += v[l];
    return s;
}
static inline __attribute__((always_inline)) float vsum(const float *p, long n) {
    float a[16] = {0};
    long j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) a[l] += p[j + l];
    float s = combine16(a);
    for (; j < n; j++) s += p[j];
    return s;
}
static inline __attribute__((always_inline)) float vdot(const float *x, const float *y, long n) {
    float a[16] = {0};
    long j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) a[l] += x[j + l] * y[j + l];
    float s = combine16(a);
    for (; j < n; j++) s += x[j] * y[j];
    return s;
}
// Swift's vmax: the row's largest value (NaN skipped; only a zero's sign can depend on the order,
// and exp(x - (+0)) = exp(x - (-0)))
static inline __attribute__((always_inline)) float vmax(const float *p, long n) {
    float a[4] = {-__builtin_inff(), -__builtin_inff(), -__builtin_inff(), -__builtin_inff()};
    long j = 0;
    for (; j + 4 <= n; j += 4)
        for (int l = 0; l < 4; l++) a[l] = p[j + l] > a[l] ? p[j + l] : a[l];
    float m01 = a[1] >= a[0] ? a[1] : a[0], m23 = a[3] >= a[2] ? a[3] : a[2];
    float m = m23 >= m01 ? m23 : m01;
    for (; j < n; j++) m = p[j] >= m ? p[j] : m;
    return m;
}

#define C_TANH 0.7978845608028654f
#define A_TANH 0.044715f

#define KERNELS(SUFFIX, ATTR)                                                                      \
ATTR static void gelu_tanh_##SUFFIX(const float *x, float *y, long lo, long hi) {                 \
    const float c2 = 2.0f * C_TANH, a = A_TANH;                                                     \
    for (long i = lo; i < hi; i++) { float v = x[i]; y[i] = v / (1.0f + vexp(-c2 * (v + a * v * v * v))); } \
}                                                                                                  \
ATTR static void gelu_tanh_backward_##SUFFIX(const float *dy, const float *x, float *dx, long lo, long hi) { \
    const float c = C_TANH, a = A_TANH, m2c = -2.0f * C_TANH, a3 = 3.0f * A_TANH;                   \
    for (long i = lo; i < hi; i++) {                                                               \
        float v = x[i], s = 1.0f / (1.0f + vexp(m2c * (v + a * v * v * v)));                       \
        dx[i] = dy[i] * (s + 2.0f * v * s * (1.0f - s) * c * (1.0f + a3 * v * v));                  \
    }                                                                                              \
}                                                                                                  \
ATTR static void gelu_erf_##SUFFIX(const float *x, float *y, long lo, long hi) {                  \
    for (long i = lo; i < hi; i++) { float v = x[i]; y[i] = 0.5f * v * (1.0f + verf(v * 0.70710678118654752f)); } \
}                                                                                                  \
ATTR static void gelu_erf_backward_##SUFFIX(const float *dy, const float *x, float *dx, long lo, long hi) { \
    for (long i = lo; i < hi; i++) {                                                               \
        float v = x[i];                                                                            \
        dx[i] = dy[i] * (0.5f * (1.0f + verf(v * 0.70710678118654752f)) + v * 0.3989422804014327f * vexp(-0.5f * v * v)); \
    }                                                                                              \
}                                                                                                  \
ATTR static void softmax_rows_##SUFFIX(float *p, long L, long lo, long hi) {                     \
    for (long r = lo; r < hi; r++) {                                                               \
        float *row = p + r * L;                                                                    \
        float m = vmax(row, L);                                                                    \
        for (long j = 0; j < L; j++) row[j] = vexp(row[j] - m);                                    \
        float inv = 1.0f / vsum(row, L);                                                           \
        for (long j = 0; j < L; j++) row[j] *= inv;                                                \
    }                                                                                              \
}                                                                                                  \
ATTR static void adamw_##SUFFIX(float *p, const float *g, float *m, float *v, const float *h, long lo, long hi) { \
    const float decay = h[0], b1 = h[1], a1 = h[2], b2 = h[3], a2 = h[4], step = h[5], bc2 = h[6], eps = h[7]; \
    for (long i = lo; i < hi; i++) {                                                               \
        float mi = m ? m[i] : 0.0f, vi = v ? v[i] : 0.0f;                                          \
        p[i] *= decay;                                                                             \
        mi = b1 * mi + a1 * g[i];                                                                  \
        vi = b2 * vi + a2 * g[i] * g[i];                                                           \
        p[i] -= step * mi / (__builtin_sqrtf(vi) / bc2 + eps);                                    \
        if (m) { m[i] = mi; v[i] = vi; }                                                           \
    }                                                                                              \
}                                                                                                  \
ATTR static void softmax_backward_rows_##SUFFIX(float *ds, const float *p, long L, long lo, long hi) { \
    for (long r = lo; r < hi; r++) {                                                               \
        float *d = ds + r * L; const float *pr = p + r * L;                                        \
        float dot = vdot(d, pr, L);                                                                \
        for (long j = 0; j < L; j++) d[j] = pr[j] * (d[j] - dot);                                  \
    }                                                                                              \
}

#if defined(__x86_64__)
KERNELS(avx512, __attribute__((target("avx512f"))))
KERNELS(avx2, __attribute__((target("avx2"))))
#endif
KERNELS(base, )

typedef struct {
    const char *name;
    void (*gelu_tanh)(const float *, float *, long, long);
    void (*gelu_tanh_backward)(const float *, const float *, float *, long, long);
    void (*gelu_erf)(const float *, float *, long, long);
    void (*gelu_erf_backward)(const float *, const float *, float *, long, long);
    void (*softmax_rows)(float *, long, long, long);
    void (*softmax_backward_rows)(float *, const float *, long, long, long);
    void (*adamw)(float *, const float *, float *, float *, const float *, long, long);
} kernel_set;

#define SET(NAME, SUFFIX) {NAME, gelu_tanh_##SUFFIX, gelu_tanh_backward_##SUFFIX, gelu_erf_##SUFFIX, \
    gelu_erf_backward_##SUFFIX, softmax_rows_##SUFFIX, softmax_backward_rows_##SUFFIX, adamw_##SUFFIX}
#if defined(__x86_64__)
static const kernel_set sets[] = {SET("avx512f", avx512), SET("avx2", avx2), SET("sse2", base)};
#else
static const kernel_set sets[] = {SET("scalar", base)};
#endif
static const kernel_set *use = &sets[sizeof sets / sizeof sets[0] - 1];

int sddit_fast_set_isa(const char *name) {
    for (unsigned i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        if (strcmp(name, sets[i].name)) continue;
#if defined(__x86_64__)
        __builtin_cpu_init();
        if (i == 0 && !__builtin_cpu_supports("avx512f")) return 0;
        if (i == 1 && !__builtin_cpu_supports("avx2")) return 0;
#endif
        use = &sets[i];
        return 1;
    }
    return 0;
}

// The widest the CPU has, or SDDIT_FAST_ISA (avx512f, avx2, sse2) when set and available.
__attribute__((constructor)) static void pick(void) {
    if (!sddit_fast_set_isa("avx512f")) sddit_fast_set_isa("avx2");
    const char *want = getenv("SDDIT_FAST_ISA");
    if (want) sddit_fast_set_isa(want);
}

const char *sddit_fast_isa(void) { return use->name; }
float sddit_fast_exp(float x) { return vexp(x); }
float sddit_fast_erf(float x) { return verf(x); }
void sddit_fast_gelu_tanh(const float *x, float *y, long lo, long hi) { use->gelu_tanh(x, y, lo, hi); }
void sddit_fast_gelu_tanh_backward(const float *dy, const float *x, float *dx, long lo, long hi) { use->gelu_tanh_backward(dy, x, dx, lo, hi); }
void sddit_fast_gelu_erf(const float *x, float *y, long lo, long hi) { use->gelu_erf(x, y, lo, hi); }
void sddit_fast_gelu_erf_backward(const float *dy, const float *x, float *dx, long lo, long hi) { use->gelu_erf_backward(dy, x, dx, lo, hi); }
void sddit_fast_softmax_rows(float *p, long L, long lo, long hi) { use->softmax_rows(p, L, lo, hi); }
void sddit_fast_softmax_backward_rows(float *ds, const float *p, long L, long lo, long hi) { use->softmax_backward_rows(ds, p, L, lo, hi); }
void sddit_fast_adamw(float *p, const float *g, float *m, float *v, const float *h, long lo, long hi) { use->adamw(p, g, m, v, h, lo, hi); }
