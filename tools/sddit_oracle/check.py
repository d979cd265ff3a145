"""Validating exchange files: check_file lists every layout problem, one line each."""

import json

import numpy as np

from .spec import (DEFAULTED_CONFIG_KEYS, FIXED_KEYS, FORMAT, INPUT_INT, LOSS_NAMES, PRECISION_MODES,
                   activation_names, activation_shapes, config_problems, grad_shapes, param_shapes)


def _attr_str(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v[()])
    return v if isinstance(v, str) else None


def config_defaults_used(cfg, groups, has_mask=True):
    """[(key, default, group, fatal)] for the config keys the oracle would fill in with SPEC
    defaults when judging the recorded `groups` (names of top-level groups): an after_step
    without lr / adam_* / weight_decay (fatal: the step cannot be judged as the run made it),
    a sampler without rho, results without /inputs/mask and without mask_ratio."""
    out = []
    results = {"activations", "losses", "grads", "after_step"} & set(groups)
    for k, (default, needs, fatal) in DEFAULTED_CONFIG_KEYS.items():
        if k in cfg and cfg[k] is not None:
            continue
        hit = next((g for g in needs if g in groups), None)
        if k == "mask_ratio" and results and not has_mask:
            hit = sorted(results)[0]
        if hit is not None:
            out.append((k, default, hit, fatal))
    return out


def _defaults_message(k, default, group, fatal):
    why = {"lr": "the step's size: after-step parameters are judged in units of lr",
           "weight_decay": "torch's AdamW defaults to 0.01, SPEC's to 0",
           "rho": "the Heun schedule", "mask_ratio": "the oracle draws its own mask"}.get(k, "AdamW")
    return (f"config: key '{k}' is missing but /{group} is recorded; the oracle would assume "
            f"SPEC's default {k} = {default!r} ({why}); record the value the run used"
            + ("" if fatal else " (a warning)"))


def _bf16_exact(a):
    """True when every float32 value has a zero low half (exactly a bfloat16 value)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return bool(np.all((b & 0xFFFF) == 0))


def check_file(path, warnings=None):
    """Every problem with the layout of exchange file `path`, one string each (empty: fine).

    Checks the root attributes (format, config with every SPEC key, precision_mode if
    present), the exact key set and shapes of /params, and, where present, /teacher, /grads,
    /inputs, /activations, /losses, /after_step and /sampler (names, shapes, dtypes, finite
    values, mask and label values, a dataset's dtype = "bfloat16" attribute).

    Config keys the oracle would fill in with a default (config_defaults_used) are problems
    for /after_step (lr, adam_beta1, adam_beta2, adam_eps, weight_decay); the others (rho for
    /sampler, mask_ratio) are appended to `warnings` when a list is given."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"cannot open as HDF5: {e}"]
    P = []
    with f:
        fmt = _attr_str(f.attrs.get("format"))
        if fmt is None:
            P.append(f"root attribute 'format' is missing or not a string (expected \"{FORMAT}\")")
        elif fmt != FORMAT:
            P.append(f"root attribute 'format' is \"{fmt}\", expected \"{FORMAT}\"")
        raw = _attr_str(f.attrs.get("config"))
        if raw is None:
            P.append("root attribute 'config' (a JSON string) is missing or not a string")
            return P
        try:
            cfg = json.loads(raw)
        except ValueError as e:
            P.append(f"root attribute 'config' is not valid JSON: {e}")
            return P
        cp = config_problems(cfg)
        if cp:
            return P + cp
        if "precision_mode" in f.attrs:
            pm = _attr_str(f.attrs.get("precision_mode"))
            if pm not in PRECISION_MODES:
                P.append(f"root attribute 'precision_mode' is {pm if pm is not None else f.attrs['precision_mode']!r}, "
                         f"expected one of: {', '.join(PRECISION_MODES)}")

        def ds(group):
            """{name: dataset} of a group's direct children; non-datasets are problems."""
            out = {}
            for k, v in f[group].items():
                if isinstance(v, h5py.Dataset):
                    out[k] = v
                else:
                    P.append(f"/{group}/{k}: expected a dataset, found a group")
            return out

        def float_ok(p, d, values=True):
            if d.dtype.kind != "f" or d.dtype.itemsize not in (2, 4, 8):
                P.append(f"/{p}: dtype {d.dtype}, expected float64, float32 or float16")
                return
            if "dtype" in d.attrs:
                tag = _attr_str(d.attrs["dtype"])
                if tag != "bfloat16":
                    P.append(f"/{p}: attribute dtype = {tag!r}; the only one known is \"bfloat16\"")
                elif d.dtype != np.float32:
                    P.append(f"/{p}: attribute dtype = \"bfloat16\" on a {d.dtype} dataset (store float32 values)")
                elif values and not _bf16_exact(d[()]):
                    P.append(f"/{p}: attribute dtype = \"bfloat16\" but some values are not bfloat16 numbers")
            if values:
                a = d[()]
                if not np.all(np.isfinite(a)):
                    P.append(f"/{p}: {int(np.size(a) - np.count_nonzero(np.isfinite(a)))} non-finite values")

        def keyset(group, expected, required=True):
            if group not in f:
                if required:
                    P.append(f"group /{group} is missing")
                return
            if not isinstance(f[group], h5py.Group):
                if "/" in group:  # top-level ones are reported above
                    P.append(f"/{group}: expected a group, found a dataset")
                return
            have = ds(group)
            for k, shp in expected.items():
                if k not in have:
                    P.append(f"/{group}/{k}: missing (expected shape {list(shp)})")
                elif have[k].shape != tuple(shp):
                    P.append(f"/{group}/{k}: shape {list(have[k].shape)}, expected {list(shp)}")
                else:
                    float_ok(f"{group}/{k}", have[k])
            for k in have:
                if k not in expected:
                    hint = " (a fixed tensor: not in /grads)" if k in FIXED_KEYS and "grads" in group else ""
                    P.append(f"/{group}/{k}: unexpected key{hint}")

        top = ("params", "teacher", "inputs", "activations", "losses", "grads", "after_step", "sampler")
        groups = set()
        for k in f:
            if k == "train" and isinstance(f[k], h5py.Group):
                continue  # an `oracle train` checkpoint's state (Adam moments, history): not SPEC's
            if k not in top:
                P.append(f"/{k}: unexpected top-level name")
            elif not isinstance(f[k], h5py.Group):
                P.append(f"/{k}: expected a group, found a dataset")
            else:
                groups.add(k)

        has_mask = "inputs" in groups and "mask" in f["inputs"]
        for k, default, g, fatal in config_defaults_used(cfg, groups, has_mask):
            msg = _defaults_message(k, default, g, fatal)
            if fatal:
                P.append(msg)
            elif warnings is not None:
                warnings.append(msg)

        student, teacher = param_shapes(cfg, "student"), param_shapes(cfg, "teacher")
        keyset("params", student)
        keyset("teacher", teacher, required=False)
        keyset("grads", grad_shapes(cfg), required=False)

        C, H, K = int(cfg["in_channels"]), int(cfg["input_size"]), int(cfg["head_out_dim"])
        T = (H // int(cfg["patch_size"])) ** 2
        N = V = None

        def int_ok(p, d, lo=None, hi=None):
            if d.dtype.kind not in "iu":
                P.append(f"/{p}: dtype {d.dtype}, expected an integer type (int64)")
                return None
            a = d[()]
            if lo is not None and np.size(a) and (a.min() < lo or a.max() > hi):
                P.append(f"/{p}: values must lie in {lo}..{hi}, found {a.min()}..{a.max()}")
            return a

        if "inputs" in groups:
            have = ds("inputs")
            if "x0" in have:
                s = have["x0"].shape
                if len(s) == 4 and s[1:] == (C, H, H):
                    N = s[0]
                else:
                    P.append(f"/inputs/x0: shape {list(s)}, expected [N, {C}, {H}, {H}]")
            else:
                P.append("/inputs/x0: missing")
            n = N if N is not None else "N"
            want = {"x0": (n, C, H, H), "noise_s": (n, C, H, H), "noise_t": (n, C, H, H),
                    "sigma_s": (n,), "labels": (n,), "mask": (n, T), "center_cls": (K,),
                    "center_patch": (K,), "step": ()}
            for k, shp in want.items():
                if k not in have:
                    if k not in ("x0", "step"):
                        P.append(f"/inputs/{k}: missing (expected shape {list(shp)})")
                    continue
                d = have[k]
                if N is not None and d.shape != shp:
                    P.append(f"/inputs/{k}: shape {list(d.shape)}, expected {list(shp)}")
                    continue
                if k in INPUT_INT:
                    a = int_ok(f"inputs/{k}", d, *{"labels": (0, int(cfg["num_classes"])),
                                                 "mask": (0, 1)}.get(k, (None, None)))
                    if k == "mask" and a is not None and a.ndim == 2 and a.size:
                        vis = T - a.sum(axis=1)
                        if vis.min() != vis.max():
                            P.append(f"/inputs/mask: samples keep different numbers of visible tokens "
                                     f"({vis.min()}..{vis.max()}); SPEC wants the same V for all")
                        elif vis[0] < 1:
                            P.append("/inputs/mask: no visible token")
                        else:
                            V = int(vis[0])
                else:
                    float_ok(f"inputs/{k}", d)
                    if k == "sigma_s" and d.dtype.kind == "f" and np.any(d[()] <= 0):
                        P.append("/inputs/sigma_s: sigma must be > 0")
            for k in have:
                if k not in want:
                    P.append(f"/inputs/{k}: unexpected name (expected one of {', '.join(want)})")

        if "activations" in groups:
            known = activation_names(cfg)
            shapes = activation_shapes(cfg, N, V) if N is not None and V is not None else {}
            for k, d in ds("activations").items():
                if k not in known:
                    P.append(f"/activations/{k}: not a SPEC activation name (never compared)")
                    continue
                if k in shapes and d.shape != shapes[k]:
                    P.append(f"/activations/{k}: shape {list(d.shape)}, expected {list(shapes[k])}")
                else:
                    float_ok(f"activations/{k}", d)

        if "losses" in groups:
            for k, d in ds("losses").items():
                if k not in LOSS_NAMES:
                    P.append(f"/losses/{k}: unexpected name (expected one of {', '.join(LOSS_NAMES)})")
                elif d.shape != ():
                    P.append(f"/losses/{k}: shape {list(d.shape)}, expected a scalar []")
                else:
                    float_ok(f"losses/{k}", d)

        if "after_step" in groups:
            keyset("after_step/params", student, required=False)
            keyset("after_step/teacher", teacher, required=False)
            for k, v in f["after_step"].items():
                if k in ("params", "teacher"):
                    continue
                if k not in ("center_cls", "center_patch"):
                    P.append(f"/after_step/{k}: unexpected name")
                elif not isinstance(v, h5py.Dataset) or v.shape != (K,):
                    P.append(f"/after_step/{k}: expected a dataset of shape [{K}]")
                else:
                    float_ok(f"after_step/{k}", v)

        if "sampler" in groups:
            have = ds("sampler")
            sn = None
            if "x_init" not in have:
                P.append("/sampler/x_init: missing")
            else:
                s = have["x_init"].shape
                if len(s) == 4 and s[1:] == (C, H, H):
                    sn = s[0]
                    float_ok("sampler/x_init", have["x_init"])
                else:
                    P.append(f"/sampler/x_init: shape {list(s)}, expected [N, {C}, {H}, {H}]")
            steps = None
            if "sigmas" not in have:
                P.append("/sampler/sigmas: missing")
            elif len(have["sigmas"].shape) != 1 or have["sigmas"].shape[0] < 2:
                P.append(f"/sampler/sigmas: shape {list(have['sigmas'].shape)}, expected [steps+1]")
            else:
                steps = have["sigmas"].shape[0] - 1
                float_ok("sampler/sigmas", have["sigmas"])
            if "labels" in have:
                if sn is not None and have["labels"].shape != (sn,):
                    P.append(f"/sampler/labels: shape {list(have['labels'].shape)}, expected [{sn}]")
                else:
                    int_ok("sampler/labels", have["labels"], 0, int(cfg["num_classes"]))
            else:
                P.append("/sampler/labels: missing")
            states = {"out"} | ({f"x.{i}" for i in range(steps)} if steps else set())
            for k, d in have.items():
                if k in ("x_init", "sigmas", "labels", "cfg_scale"):
                    continue
                if k not in states:
                    P.append(f"/sampler/{k}: unexpected name (expected x.0..x.{(steps or 1) - 1} or out)")
                elif sn is not None and d.shape != (sn, C, H, H):
                    P.append(f"/sampler/{k}: shape {list(d.shape)}, expected {[sn, C, H, H]}")
                else:
                    float_ok(f"sampler/{k}", d)
    return P
