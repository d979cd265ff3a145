"""Regenerates types.h5, the h5py-written fixture read by HDF5IOTests (no Python needed at test time).

    python3 make_fixtures.py   # writes types.h5 next to this script
"""
import os
import h5py
import numpy as np

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "types.h5")
with h5py.File(out, "w", libver="earliest") as f:
    f["f64"] = np.arange(6, dtype="<f8").reshape(2, 3) * 1.5 - 2
    f["f32"] = np.array([0.1, -2.5, 3e38, 1e-45], dtype="<f4")
    f["f16"] = np.array([0.5, -2, 65504], dtype="<f2")
    f["i8"] = np.array([-128, 0, 127], dtype="i1")
    f["i16"] = np.array([-32768, 32767], dtype="<i2")
    f["i32"] = np.array([-2**31, 2**31 - 1], dtype="<i4")
    f["i64"] = np.array([-2**63, 2**63 - 1, 2**53 + 1], dtype="<i8")
    f["u8"] = np.array([0, 1, 127, 128, 255], dtype="u1")
    f["u16"] = np.array([0, 65535], dtype="<u2")
    f["u32"] = np.array([0, 2**32 - 1], dtype="<u4")
    f["u64"] = np.array([0, 2**63 - 1], dtype="<u8")
    f["u64big"] = np.array([2**64 - 1], dtype="<u8")
    f["be_f64"] = np.array([1.25, -7], dtype=">f8")
    f["be_i32"] = np.array([-5, 70000], dtype=">i4")
    f["scalar"] = np.float64(3.25)
    f["grp/sub/x"] = np.array([[1, 2], [3, 4]], dtype="<i8")
    f["str_vlen"] = np.array(["a", "bc"], dtype=h5py.string_dtype())
    f["str_fixed"] = np.array([b"abc", b"de"], dtype="S5")
    f["bools"] = np.array([True, False, True])
    f["compound"] = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    f["empty"] = h5py.Empty("f8")
    f["soft"] = h5py.SoftLink("/f64")

    f.attrs["title"] = "héllo wörld ✓"                       # variable-length UTF-8
    f.attrs["ascii_fixed"] = np.bytes_(b"fixed")              # fixed-length ASCII, NUL-padded
    f.attrs.create("utf8_fixed", "grüße".encode(), dtype=h5py.string_dtype("utf-8", 12))
    f.attrs["lr"] = 0.001
    f.attrs["steps"] = np.int64(1000)
    f.attrs["flag"] = True                                    # enum -> not a number
    f.attrs["list"] = np.array([1, 2, 3])                     # not a scalar
    f["grp"].attrs["note"] = "group note"

    # Fixed-length, space-padded ASCII attribute (low-level API).
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(8)
    tid.set_strpad(h5py.h5t.STR_SPACEPAD)
    aid = h5py.h5a.create(f.id, b"spacepad", tid, h5py.h5s.create(h5py.h5s.SCALAR))
    aid.write(np.array(b"abc     ", dtype="S8"))
print("wrote", out, os.path.getsize(out), "bytes")
