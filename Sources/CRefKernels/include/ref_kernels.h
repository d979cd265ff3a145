#ifndef SDDIT_REF_KERNELS_H
#define SDDIT_REF_KERNELS_H

/// C[r * ldc + j] (= or +=) s0[j] + sum_{k < K} A[r * rs + k * cs] * panel[k * 8 + j]
/// for r < rows (at most 8) and j < width (at most 8): each sum in ascending k with one
/// rounding per multiply and per add, as a plain loop `s = s0; for k: s += a * b` takes it.
void sddit_ref_block(const double *A, long rs, long cs, long rows, const double *panel, long K,
                     const double *s0, double *C, long ldc, long width, int add);

/// Packs 8-row blocks b0 ..< b1 of the M x K matrix X(i, k) = X[i * rs + k * cs] into
/// p[b * 8 K + k * 8 + r] = X(8 b + r, k) (zero for rows past M). For A(m, k) pass (rs, cs) as
/// they are; for B(k, n) pass its column stride as rs and its row stride as cs.
void sddit_ref_pack(const double *X, long rs, long cs, long M, long K, double *p, long b0, long b1);

/// C (= or +=) start + pa pb for the output blocks mb0 ..< mb1 x nb0 ..< nb1 of 8 x 8, with
/// pa and pb packed by sddit_ref_pack: each output summed by the block kernel (see above).
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
