// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; include path from `pkg-config openblas`).
#include <cblas.h>
// glibc malloc_trim: the fast path hands a released model's memory back to the system.
#include <malloc.h>
