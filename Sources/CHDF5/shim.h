// Swift-callable wrappers for HDF5 constants that are C macros (Swift cannot import
// macros that expand to expressions such as `(H5OPEN H5T_NATIVE_DOUBLE_g)`), plus two
// tiny helpers that are simpler in C than through Swift's C-function-pointer bridging.
//
// The include path (/usr/include/hdf5/serial on Debian) comes from `pkg-config hdf5`.
// Note: Debian builds HDF5 with the 1.8 API as default, so unsuffixed names such as
// H5Dopen/H5Acreate are macros mapping to the *1 variants; always call the explicitly
// numbered functions (H5Dopen2, H5Acreate2, H5Eset_auto2, ...) from Swift.
#ifndef SD_CHDF5_SHIM_H
#define SD_CHDF5_SHIM_H

#include <hdf5.h>
#include <stdio.h>
#include <string.h>

static inline hid_t sd_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t sd_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t sd_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline size_t sd_H5T_VARIABLE(void) { return H5T_VARIABLE; }

static inline unsigned sd_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned sd_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }

static inline hid_t sd_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }

// Memory (native) types.
static inline hid_t sd_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t sd_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t sd_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t sd_H5T_NATIVE_UINT64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t sd_H5T_C_S1(void) { return H5T_C_S1; }

// File types written by HDF5IO (little-endian, numpy's '<f8', '<f4', '<i8').
static inline hid_t sd_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t sd_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t sd_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }

/// File-access property list: optional "strong" close degree (closing the file closes every
/// object still open in it) and, where supported (1.10.7+), file locking that is ignored on
/// file systems without lock support. Returns a negative id on failure.
static inline hid_t sd_make_fapl(int strong_close) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return fapl;
    if (strong_close && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) { H5Pclose(fapl); return -1; }
#if H5_VERSION_GE(1, 10, 7)
    if (H5Pset_file_locking(fapl, 1, 1) < 0) { H5Pclose(fapl); return -1; }
#endif
    return fapl;
}

/// File address of an open object, used to detect hard-link cycles while walking groups.
static inline herr_t sd_object_address(hid_t obj, uint64_t *addr) {
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t info;
    if (H5Oget_info3(obj, &info, H5O_INFO_BASIC) < 0) return -1;
    memcpy(addr, &info.token, sizeof *addr);  // native VOL: token starts with the address
#else
    H5O_info_t info;
    if (H5Oget_info2(obj, &info, H5O_INFO_BASIC) < 0) return -1;
    *addr = (uint64_t)info.addr;
#endif
    return 0;
}

static inline herr_t sd_error_walk_cb(unsigned n, const H5E_error2_t *err, void *data) {
    (void)n;
    char *buf = (char *)data;
    if (buf[0] == '\0' && err != NULL && err->desc != NULL && err->desc[0] != '\0')
        snprintf(buf, 512, "%s", err->desc);
    return 0;
}

/// Copies the innermost (most specific) message of the calling thread's HDF5 error
/// stack into `buf` (at least 512 bytes); empty when the stack is empty.
static inline void sd_innermost_error(char *buf) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, sd_error_walk_cb, buf);
}

#endif

/* 1 when the dataset's storage is (fully) allocated: an unallocated dataset reads its fill value. */
static inline int H5Dget_space_status_allocated(hid_t did) {
    H5D_space_status_t st;
    if (H5Dget_space_status(did, &st) < 0) return 0;
    return st == H5D_SPACE_STATUS_ALLOCATED;
}

