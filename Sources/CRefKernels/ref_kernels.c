// The reference's product kernel: 8 rows x 8 columns of independent sums, vectorized across
// the columns only. Every sum is s0 + a_0 b_0 + a_1 b_1 + ... in ascending k, each product and
// each addition rounded once: explicit multiply and add intrinsics, built with
// -ffp-contract=off, so no fused multiply-add can appear. Double is exact the same on every
// instruction set, which is picked once at load time (AVX-512F, AVX2, else SSE2).
#include <stdlib.h>
#include <string.h>
#include "ref_kernels.h"

// Block kernels: out[8 r + j] = s0[j] + sum_k a[8 k + r] b[8 k + j] for an 8 x 8 block, from
// packed operands (sddit_ref_pack): a holds 8 rows of A, b 8 columns of B, both k-major.
typedef void (*block_fn)(const double *a, const double *b, long K, const double *s0, double *out);

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

// 8 rows x 8 columns: 8 independent add chains (enough to cover the add latency)
__attribute__((target("avx512f")))
static void block_avx512(const double *a, const double *b, long K, const double *s0, double *out) {
    __m512d c[8];
    for (int r = 0; r < 8; r++) c[r] = _mm512_loadu_pd(s0);
    for (long k = 0; k < K; k++) {
        __m512d x = _mm512_loadu_pd(b + 8 * k);
        const double *y = a + 8 * k;
        for (int r = 0; r < 8; r++) c[r] = _mm512_add_pd(c[r], _mm512_mul_pd(x, _mm512_set1_pd(y[r])));
    }
    for (int r = 0; r < 8; r++) _mm512_storeu_pd(out + 8 * r, c[r]);
}

// 4 rows x 8 columns at a time (8 accumulators of 16 registers), twice
__attribute__((target("avx2")))
static void block_avx2(const double *a, const double *b, long K, const double *s0, double *out) {
    for (int h = 0; h < 2; h++) {
        const double *ah = a + 4 * h;
        __m256d l0 = _mm256_loadu_pd(s0), h0 = _mm256_loadu_pd(s0 + 4);
        __m256d l1 = l0, h1 = h0, l2 = l0, h2 = h0, l3 = l0, h3 = h0;
        for (long k = 0; k < K; k++) {
            __m256d bl = _mm256_loadu_pd(b + 8 * k), bh = _mm256_loadu_pd(b + 8 * k + 4);
            const double *y = ah + 8 * k;
            __m256d x0 = _mm256_broadcast_sd(y), x1 = _mm256_broadcast_sd(y + 1);
            __m256d x2 = _mm256_broadcast_sd(y + 2), x3 = _mm256_broadcast_sd(y + 3);
            l0 = _mm256_add_pd(l0, _mm256_mul_pd(bl, x0)); h0 = _mm256_add_pd(h0, _mm256_mul_pd(bh, x0));
            l1 = _mm256_add_pd(l1, _mm256_mul_pd(bl, x1)); h1 = _mm256_add_pd(h1, _mm256_mul_pd(bh, x1));
            l2 = _mm256_add_pd(l2, _mm256_mul_pd(bl, x2)); h2 = _mm256_add_pd(h2, _mm256_mul_pd(bh, x2));
            l3 = _mm256_add_pd(l3, _mm256_mul_pd(bl, x3)); h3 = _mm256_add_pd(h3, _mm256_mul_pd(bh, x3));
        }
        double *o = out + 32 * h;
        _mm256_storeu_pd(o, l0); _mm256_storeu_pd(o + 4, h0); _mm256_storeu_pd(o + 8, l1); _mm256_storeu_pd(o + 12, h1);
        _mm256_storeu_pd(o + 16, l2); _mm256_storeu_pd(o + 20, h2); _mm256_storeu_pd(o + 24, l3); _mm256_storeu_pd(o + 28, h3);
    }
}

// SSE2 (every x86-64): 2 lanes; one row at a time over the 8 columns (4 accumulators)
static void block_sse2(const double *a, const double *b, long K, const double *s0, double *out) {
    for (int r = 0; r < 8; r++) {
        __m128d c0 = _mm_loadu_pd(s0), c1 = _mm_loadu_pd(s0 + 2), c2 = _mm_loadu_pd(s0 + 4), c3 = _mm_loadu_pd(s0 + 6);
        for (long k = 0; k < K; k++) {
            __m128d x = _mm_set1_pd(a[8 * k + r]);
            const double *y = b + 8 * k;
            c0 = _mm_add_pd(c0, _mm_mul_pd(_mm_loadu_pd(y), x));
            c1 = _mm_add_pd(c1, _mm_mul_pd(_mm_loadu_pd(y + 2), x));
            c2 = _mm_add_pd(c2, _mm_mul_pd(_mm_loadu_pd(y + 4), x));
            c3 = _mm_add_pd(c3, _mm_mul_pd(_mm_loadu_pd(y + 6), x));
        }
        _mm_storeu_pd(out + 8 * r, c0); _mm_storeu_pd(out + 8 * r + 2, c1);
        _mm_storeu_pd(out + 8 * r + 4, c2); _mm_storeu_pd(out + 8 * r + 6, c3);
    }
}

static block_fn chosen = block_sse2;
static const char *chosen_name = "sse2";

int sddit_ref_set_isa(const char *name) {
    __builtin_cpu_init();
    if (!strcmp(name, "avx512f") && __builtin_cpu_supports("avx512f")) { chosen = block_avx512; chosen_name = "avx512f"; return 1; }
    if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2")) { chosen = block_avx2; chosen_name = "avx2"; return 1; }
    if (!strcmp(name, "sse2")) { chosen = block_sse2; chosen_name = "sse2"; return 1; }
    return 0;
}

// The widest the CPU has, or SDDIT_REF_ISA (avx512f, avx2, sse2) when set and available: the
// bits are the same on each; the variable is for timing what another CPU would run.
__attribute__((constructor))
static void pick(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) { chosen = block_avx512; chosen_name = "avx512f"; }
    else if (__builtin_cpu_supports("avx2")) { chosen = block_avx2; chosen_name = "avx2"; }
    const char *want = getenv("SDDIT_REF_ISA");
    if (want) sddit_ref_set_isa(want);
}

#else
// Other architectures: the same sums, one output at a time (scalar, the plain loops' order).
static void block_scalar(const double *a, const double *b, long K, const double *s0, double *out) {
    for (int r = 0; r < 8; r++)
        for (int j = 0; j < 8; j++) {
            double s = s0[j];
            for (long k = 0; k < K; k++) s += a[8 * k + r] * b[8 * k + j];
            out[8 * r + j] = s;
        }
}
static block_fn chosen = block_scalar;
int sddit_ref_set_isa(const char *name) { return !strcmp(name, "scalar"); }
const char *sddit_ref_isa_name = "scalar";
#define chosen_name sddit_ref_isa_name
#endif

const char *sddit_ref_isa(void) { return chosen_name; }

// Packing, so that the block kernel reads both operands as contiguous streams: copies only.
void sddit_ref_pack(const double *X, long rs, long cs, long M, long K, double *p, long b0, long b1) {
    for (long b = b0; b < b1; b++) {
        double *d = p + b * 8 * K;
        long rows = M - 8 * b < 8 ? M - 8 * b : 8;
        const double *x = X + 8 * b * rs;
        if (rows == 8 && cs == 1) {
            for (long k = 0; k < K; k++)
                for (int r = 0; r < 8; r++) d[k * 8 + r] = x[r * rs + k];
        } else if (rows == 8 && rs == 1) {
            for (long k = 0; k < K; k++) memcpy(d + k * 8, x + k * cs, 8 * sizeof(double));
        } else {
            for (long k = 0; k < K; k++)
                for (int r = 0; r < 8; r++) d[k * 8 + r] = r < rows ? x[r * rs + k * cs] : 0;
        }
    }
}

void sddit_ref_tile(long M, long N, long K, const double *pa, const double *pb, const double *start,
                    double *C, long ldc, int add, long mb0, long mb1, long nb0, long nb1) {
    double s0[8], out[64];
    for (long nb = nb0; nb < nb1; nb++) {
        long n0 = nb * 8, width = N - n0 < 8 ? N - n0 : 8;
        for (long j = 0; j < 8; j++) s0[j] = start && j < width ? start[n0 + j] : 0;
        for (long mb = mb0; mb < mb1; mb++) {
            long rows = M - mb * 8 < 8 ? M - mb * 8 : 8;
            chosen(pa + mb * 8 * K, pb + nb * 8 * K, K, s0, out);
            double *c = C + mb * 8 * ldc + n0;
            for (long r = 0; r < rows; r++, c += ldc) {
                if (add) { for (long j = 0; j < width; j++) c[j] += out[8 * r + j]; }
                else { for (long j = 0; j < width; j++) c[j] = out[8 * r + j]; }
            }
        }
    }
}

#include <malloc.h>
void sddit_keep_freed_memory(void) {
#ifdef M_MMAP_MAX
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
#endif
}
