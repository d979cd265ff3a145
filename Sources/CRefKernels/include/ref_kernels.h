#ifndef SDDIT_REF_KERNELS_H
#define SDDIT_REF_KERNELS_H

/// Packs 8-row blocks b0 ..< b1 of the M x K matrix X(i, k) = X[i * rs + k * cs] into
/// p[b * 8 K + k * 8 + r] = X(8 b + r, k) (zero for rows past M). For A(m, k) pass (rs, cs) as
/// they are; for B(k, n) pass its column stride as rs and its row stride as cs.
void sddit_ref_pack(const double *X, long rs, long cs, long M, long K, double *p, long b0, long b1);

/// C[m * ldc + n] (= or +=) start[n] + sum_{k < K} A(m, k) B(k, n) for the 8 x 8 output blocks
/// mb0 ..< mb1 x nb0 ..< nb1, with A and B packed by sddit_ref_pack: each sum in ascending k
/// with one rounding per multiply and per add, as a plain loop `s = start; for k: s += a * b`
/// takes it. start may be NULL (0).
void sddit_ref_tile(long M, long N, long K, const double *pa, const double *pb, const double *start,
                    double *C, long ldc, int add, long mb0, long mb1, long nb0, long nb1);

/// The instruction set the block kernel uses on this CPU: "avx512f", "avx2" or "sse2".
const char *sddit_ref_isa(void);

/// Uses `name` ("avx512f", "avx2", "sse2") when this CPU has it (tests: every path gives the
/// same bits); returns 0, changing nothing, otherwise. Not for use while kernels run.
int sddit_ref_set_isa(const char *name);

/// glibc: keep freed blocks up to 32 MiB on the heap (its largest mmap threshold) and never
/// trim it, so the reference's per-activation arrays are reused instead of mapped anew.
void sddit_keep_freed_memory(void);

#endif
