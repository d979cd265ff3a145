// The reference's product kernel: up to 8 rows x 8 columns of independent sums, vectorized across
// the columns only. Every sum is s0 + a_0 b_0 + a_1 b_1 + ... in ascending k, each product and
// each addition rounded once: explicit multiply and add intrinsics, built with
// -ffp-contract=off, so no fused multiply-add can appear. Double is exact the same on every
// instruction set, which is picked once at load time (AVX-512F, AVX2, else SSE2).
#include <stdlib.h>
#include <string.h>
#include "ref_kernels.h"

static void put(const double *v, double *c, long width, int add) {
    if (add) { for (long j = 0; j < width; j++) c[j] += v[j]; }
    else { for (long j = 0; j < width; j++) c[j] = v[j]; }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx512f")))
static void block_avx512(const double *A, long rs, long cs, long rows, const double *panel, long K,
                         const double *s0, double *C, long ldc, long width, int add) {
    double out[8];
    if (rows == 8) {   // 8 independent add chains: enough to cover the add latency
        __m512d c[8];
        for (int r = 0; r < 8; r++) c[r] = _mm512_loadu_pd(s0);
        for (long k = 0; k < K; k++) {
            __m512d b = _mm512_loadu_pd(panel + 8 * k);
            const double *a = A + k * cs;
            c[0] = _mm512_add_pd(c[0], _mm512_mul_pd(b, _mm512_set1_pd(a[0])));
            c[1] = _mm512_add_pd(c[1], _mm512_mul_pd(b, _mm512_set1_pd(a[rs])));
            c[2] = _mm512_add_pd(c[2], _mm512_mul_pd(b, _mm512_set1_pd(a[2 * rs])));
            c[3] = _mm512_add_pd(c[3], _mm512_mul_pd(b, _mm512_set1_pd(a[3 * rs])));
            c[4] = _mm512_add_pd(c[4], _mm512_mul_pd(b, _mm512_set1_pd(a[4 * rs])));
            c[5] = _mm512_add_pd(c[5], _mm512_mul_pd(b, _mm512_set1_pd(a[5 * rs])));
            c[6] = _mm512_add_pd(c[6], _mm512_mul_pd(b, _mm512_set1_pd(a[6 * rs])));
            c[7] = _mm512_add_pd(c[7], _mm512_mul_pd(b, _mm512_set1_pd(a[7 * rs])));
        }
        for (int r = 0; r < 8; r++) { _mm512_storeu_pd(out, c[r]); put(out, C + r * ldc, width, add); }
        return;
    }
    if (rows >= 4) {
        __m512d c0 = _mm512_loadu_pd(s0), c1 = c0, c2 = c0, c3 = c0;
        const double *a0 = A, *a1 = A + rs, *a2 = A + 2 * rs, *a3 = A + 3 * rs;
        for (long k = 0; k < K; k++) {
            __m512d b = _mm512_loadu_pd(panel + 8 * k);
            long o = k * cs;
            c0 = _mm512_add_pd(c0, _mm512_mul_pd(b, _mm512_set1_pd(a0[o])));
            c1 = _mm512_add_pd(c1, _mm512_mul_pd(b, _mm512_set1_pd(a1[o])));
            c2 = _mm512_add_pd(c2, _mm512_mul_pd(b, _mm512_set1_pd(a2[o])));
            c3 = _mm512_add_pd(c3, _mm512_mul_pd(b, _mm512_set1_pd(a3[o])));
        }
        _mm512_storeu_pd(out, c0); put(out, C, width, add);
        _mm512_storeu_pd(out, c1); put(out, C + ldc, width, add);
        _mm512_storeu_pd(out, c2); put(out, C + 2 * ldc, width, add);
        _mm512_storeu_pd(out, c3); put(out, C + 3 * ldc, width, add);
        A += 4 * rs; C += 4 * ldc; rows -= 4;
    }
    for (long r = 0; r < rows; r++) {
        __m512d c0 = _mm512_loadu_pd(s0);
        const double *a = A + r * rs;
        for (long k = 0; k < K; k++) c0 = _mm512_add_pd(c0, _mm512_mul_pd(_mm512_loadu_pd(panel + 8 * k), _mm512_set1_pd(a[k * cs])));
        _mm512_storeu_pd(out, c0); put(out, C + r * ldc, width, add);
    }
}

__attribute__((target("avx2")))
static void block_avx2(const double *A, long rs, long cs, long rows, const double *panel, long K,
                       const double *s0, double *C, long ldc, long width, int add) {
    double out[8];
    for (; rows >= 4; rows -= 4, A += 4 * rs, C += 4 * ldc) {
        __m256d l0 = _mm256_loadu_pd(s0), h0 = _mm256_loadu_pd(s0 + 4);
        __m256d l1 = l0, h1 = h0, l2 = l0, h2 = h0, l3 = l0, h3 = h0;
        const double *a0 = A, *a1 = A + rs, *a2 = A + 2 * rs, *a3 = A + 3 * rs;
        for (long k = 0; k < K; k++) {
            __m256d bl = _mm256_loadu_pd(panel + 8 * k), bh = _mm256_loadu_pd(panel + 8 * k + 4);
            long o = k * cs;
            __m256d x0 = _mm256_set1_pd(a0[o]), x1 = _mm256_set1_pd(a1[o]), x2 = _mm256_set1_pd(a2[o]), x3 = _mm256_set1_pd(a3[o]);
            l0 = _mm256_add_pd(l0, _mm256_mul_pd(bl, x0)); h0 = _mm256_add_pd(h0, _mm256_mul_pd(bh, x0));
            l1 = _mm256_add_pd(l1, _mm256_mul_pd(bl, x1)); h1 = _mm256_add_pd(h1, _mm256_mul_pd(bh, x1));
            l2 = _mm256_add_pd(l2, _mm256_mul_pd(bl, x2)); h2 = _mm256_add_pd(h2, _mm256_mul_pd(bh, x2));
            l3 = _mm256_add_pd(l3, _mm256_mul_pd(bl, x3)); h3 = _mm256_add_pd(h3, _mm256_mul_pd(bh, x3));
        }
        _mm256_storeu_pd(out, l0); _mm256_storeu_pd(out + 4, h0); put(out, C, width, add);
        _mm256_storeu_pd(out, l1); _mm256_storeu_pd(out + 4, h1); put(out, C + ldc, width, add);
        _mm256_storeu_pd(out, l2); _mm256_storeu_pd(out + 4, h2); put(out, C + 2 * ldc, width, add);
        _mm256_storeu_pd(out, l3); _mm256_storeu_pd(out + 4, h3); put(out, C + 3 * ldc, width, add);
    }
    for (long r = 0; r < rows; r++) {
        __m256d l = _mm256_loadu_pd(s0), h = _mm256_loadu_pd(s0 + 4);
        const double *a = A + r * rs;
        for (long k = 0; k < K; k++) {
            __m256d x = _mm256_set1_pd(a[k * cs]);
            l = _mm256_add_pd(l, _mm256_mul_pd(_mm256_loadu_pd(panel + 8 * k), x));
            h = _mm256_add_pd(h, _mm256_mul_pd(_mm256_loadu_pd(panel + 8 * k + 4), x));
        }
        _mm256_storeu_pd(out, l); _mm256_storeu_pd(out + 4, h); put(out, C + r * ldc, width, add);
    }
}

// SSE2 (every x86-64): 2 lanes; one row at a time over the 8 columns (4 accumulators).
static void block_sse2(const double *A, long rs, long cs, long rows, const double *panel, long K,
                       const double *s0, double *C, long ldc, long width, int add) {
    double out[8];
    for (long r = 0; r < rows; r++) {
        __m128d c0 = _mm_loadu_pd(s0), c1 = _mm_loadu_pd(s0 + 2), c2 = _mm_loadu_pd(s0 + 4), c3 = _mm_loadu_pd(s0 + 6);
        const double *a = A + r * rs;
        for (long k = 0; k < K; k++) {
            __m128d x = _mm_set1_pd(a[k * cs]);
            const double *b = panel + 8 * k;
            c0 = _mm_add_pd(c0, _mm_mul_pd(_mm_loadu_pd(b), x));
            c1 = _mm_add_pd(c1, _mm_mul_pd(_mm_loadu_pd(b + 2), x));
            c2 = _mm_add_pd(c2, _mm_mul_pd(_mm_loadu_pd(b + 4), x));
            c3 = _mm_add_pd(c3, _mm_mul_pd(_mm_loadu_pd(b + 6), x));
        }
        _mm_storeu_pd(out, c0); _mm_storeu_pd(out + 2, c1); _mm_storeu_pd(out + 4, c2); _mm_storeu_pd(out + 6, c3);
        put(out, C + r * ldc, width, add);
    }
}

typedef void (*block_fn)(const double *, long, long, long, const double *, long, const double *, double *, long, long, int);
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

void sddit_ref_block(const double *A, long rs, long cs, long rows, const double *panel, long K,
                     const double *s0, double *C, long ldc, long width, int add) {
    chosen(A, rs, cs, rows, panel, K, s0, C, ldc, width, add);
}
#define chosen_block chosen

const char *sddit_ref_isa(void) { return chosen_name; }

#else
// Other architectures: the same sums, one output at a time (scalar, the plain loops' order).
void sddit_ref_block(const double *A, long rs, long cs, long rows, const double *panel, long K,
                     const double *s0, double *C, long ldc, long width, int add) {
    for (long r = 0; r < rows; r++) {
        double out[8];
        for (long j = 0; j < 8; j++) {
            double s = s0[j];
            for (long k = 0; k < K; k++) s += A[r * rs + k * cs] * panel[8 * k + j];
            out[j] = s;
        }
        put(out, C + r * ldc, width, add);
    }
}
int sddit_ref_set_isa(const char *name) { return !strcmp(name, "scalar"); }
#define chosen_block sddit_ref_block
const char *sddit_ref_isa(void) { return "scalar"; }
#endif

// Packing, so that the block kernel reads both operands as contiguous streams:
// pa[mb * 8 K + k * 8 + r] = A(8 mb + r, k) and pb[nb * 8 K + k * 8 + j] = B(k, 8 nb + j), zero
// past M or N (those lanes are computed and dropped). Copies only: no arithmetic.
void sddit_ref_pack(const double *A, long rs, long cs, long M, long K, double *pa, long b0, long b1) {
    for (long b = b0; b < b1; b++) {
        double *d = pa + b * 8 * K;
        long rows = M - 8 * b < 8 ? M - 8 * b : 8;
        const double *a = A + 8 * b * rs;
        if (rows == 8 && cs == 1) {
            for (long k = 0; k < K; k++)
                for (int r = 0; r < 8; r++) d[k * 8 + r] = a[r * rs + k];
        } else if (rows == 8 && rs == 1) {
            for (long k = 0; k < K; k++) memcpy(d + k * 8, a + k * cs, 8 * sizeof(double));
        } else {
            for (long k = 0; k < K; k++)
                for (int r = 0; r < 8; r++) d[k * 8 + r] = r < rows ? a[r * rs + k * cs] : 0;
        }
    }
}

void sddit_ref_tile(long M, long N, long K, const double *pa, const double *pb, const double *start,
                    double *C, long ldc, int add, long mb0, long mb1, long nb0, long nb1) {
    double s0[8];
    for (long nb = nb0; nb < nb1; nb++) {
        long n0 = nb * 8, width = N - n0 < 8 ? N - n0 : 8;
        for (long j = 0; j < 8; j++) s0[j] = start && j < width ? start[n0 + j] : 0;
        for (long mb = mb0; mb < mb1; mb++) {
            long rows = M - mb * 8 < 8 ? M - mb * 8 : 8;
            chosen_block(pa + mb * 8 * K, 1, 8, rows, pb + nb * 8 * K, K, s0, C + mb * 8 * ldc + n0, ldc, width, add);
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
