#!/usr/bin/env python3
"""Read, write and check "sddit-oracle/1" exchange files (SPEC section 7) from Python.

Needs numpy and h5py only; torch is imported lazily, when a .pt file is loaded or hooks
are registered. Library:

    param_shapes(cfg, part)             {SPEC key: shape} for part "student" or "teacher"
    preset(name), load_config(spec)     config dicts with the SPEC section 7 JSON keys
    convert_state_dict(sd, cfg, teacher_state_dict=None)
                                        a PyTorch state_dict -> {SPEC key: float64 array}
    write_exchange(path, cfg, params, teacher=None, inputs=None, activations=None,
                   losses=None, grads=None, ..., precision_mode=None)
                                        writes the layout atomically; results keep their dtype
    check_file(path, warnings=None)     [problem, ...] (empty: the layout is right); notes
                                        that are not errors go to the `warnings` list
    config_defaults_used(cfg, groups)   (key, default, group, fatal) for config keys the oracle
                                        would fill in with SPEC defaults
    register_sddit_hooks(model, store, prefix="student")
                                        forward hooks recording the block outputs (dtype kept)
    capture(tensor)                     detached CPU copy, dtype kept (for manual capture)

CLI:
    python tools/sddit_h5.py convert --state-dict ckpt.pt --config tiny --out run.h5
    python tools/sddit_h5.py check run.h5
    python tools/sddit_h5.py shapes --config S/2
"""

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping

import numpy as np

FORMAT = "sddit-oracle/1"

# SPEC section 7: the keys the config JSON must have (integers first, then reals).
INT_CONFIG_KEYS = ("input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads",
                   "decoder_hidden_size", "decoder_depth", "decoder_num_heads", "num_classes",
                   "head_hidden_dim", "head_bottleneck_dim", "head_out_dim")
REAL_CONFIG_KEYS = ("mlp_ratio", "sigma_data", "sigma_min", "sigma_max", "p_mean", "p_std",
                    "tau_s", "tau_t", "center_momentum", "ema_beta")
REQUIRED_CONFIG_KEYS = INT_CONFIG_KEYS + REAL_CONFIG_KEYS

# Fixed tensors (SPEC section 5): in /params but never in /grads.
FIXED_KEYS = ("pos_embed", "decoder_pos_embed", "head.last_layer.weight_g")

# Prefixes that wrappers add to state_dict keys (DDP, torch.compile, EDM preconditioning).
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")

LOSS_NAMES = ("generative", "dis_cls", "dis_patch", "total")
INPUT_FLOAT = ("x0", "sigma_s", "noise_s", "noise_t", "center_cls", "center_patch")
INPUT_INT = ("labels", "mask", "step")
# Datasets stored as integers wherever they appear (relative to the file root).
INTEGER_PATHS = {"inputs/labels", "inputs/mask", "inputs/step", "sampler/labels"}
# Groups whose contents are a run's results: their float32 tensors stay float32 on write.
RESULT_GROUPS = ("activations", "losses", "grads", "after_step", "sampler")

# Precision modes a run may declare (root attribute `precision_mode`, write_exchange's
# precision_mode=): how the numbers in the file were computed.
PRECISION_MODES = ("float64", "float32", "tf32", "tf32-conv", "fp16-autocast", "bf16-autocast", "fp16-pure", "bf16-pure")

# Config keys the oracle reads with a default when absent (Sources/SDDiTCore/Config.swift,
# SPEC sections 5 and 6), and the groups whose comparison depends on them. A file that records
# such a group without the key is judged under the default, which may not be what the run used
# (torch's AdamW defaults to lr 1e-3 and weight_decay 1e-2; SPEC's are 1e-4 and 0).
DEFAULTED_CONFIG_KEYS = {
    # key: (oracle default, groups that need it, missing is an error)
    "lr": (1e-4, ("after_step",), True),
    "adam_beta1": (0.9, ("after_step",), True),
    "adam_beta2": (0.999, ("after_step",), True),
    "adam_eps": (1e-8, ("after_step",), True),
    "weight_decay": (0.0, ("after_step",), True),
    "rho": (7.0, ("sampler",), False),
    # only read where the file has no /inputs/mask (the oracle then draws its own setup)
    "mask_ratio": (0.2, (), False),
}
# ema_beta and center_momentum are required keys (REQUIRED_CONFIG_KEYS): no default applies.

_COMMON = {"in_channels": 4, "patch_size": 2, "mlp_ratio": 4.0,
           "sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0, "p_mean": -1.2, "p_std": 1.2,
           "tau_s": 0.1, "tau_t": 0.09, "center_momentum": 0.9, "ema_beta": 0.996}


def _sddit(name, D, depth, heads):
    return dict(_COMMON, config_name=name, input_size=32, hidden_size=D, depth=depth,
                num_heads=heads, decoder_hidden_size=512, decoder_depth=8, decoder_num_heads=16,
                num_classes=1000, head_hidden_dim=2048, head_bottleneck_dim=256, head_out_dim=8192)


PRESETS = {
    "tiny": dict(_COMMON, config_name="tiny", input_size=8, hidden_size=32, depth=2, num_heads=4,
                 decoder_hidden_size=32, decoder_depth=2, decoder_num_heads=4, num_classes=10,
                 head_hidden_dim=64, head_bottleneck_dim=16, head_out_dim=64),
    "S/2": _sddit("S/2", 384, 12, 6),
    "B/2": _sddit("B/2", 768, 12, 12),
    "XL/2": _sddit("XL/2", 1152, 28, 16),
}


class ExchangeError(ValueError):
    """A state_dict, config or file that does not fit SPEC section 7."""


class StateDictError(ExchangeError):
    """Keys missing, unexpected or misshaped; the lists are kept as attributes."""

    def __init__(self, what, missing, unexpected, misshaped, hints=()):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, "
                 f"{len(misshaped)} misshaped keys"]
        lines += [f"  missing    {k}: expected shape {list(s)}" for k, s in missing]
        lines += [f"  unexpected {k}: found shape {list(s)}" for k, s in unexpected]
        lines += [f"  misshaped  {k}: expected shape {list(e)}, found {list(f)}" for k, e, f in misshaped]
        lines += [f"  hint: {h}" for h in hints]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------
# Configs and shapes
# ---------------------------------------------------------------------------------------

def preset(name):
    """A copy of preset `name`: tiny, S/2, B/2, XL/2 (an "SD-DiT-" prefix is accepted)."""
    s = name.strip()
    if s.lower().startswith("sd-dit-"):
        s = s[7:]
    for k, v in PRESETS.items():
        if k.lower() == s.lower():
            return dict(v)
    raise ExchangeError(f"unknown config '{name}'; expected one of: {', '.join(PRESETS)}, "
                        "a .json file, or an exchange .h5 file")


def config_problems(cfg):
    """Problems with a config dict: missing or mistyped SPEC keys, inconsistent sizes."""
    if not isinstance(cfg, Mapping):
        return [f"config: not a JSON object but {type(cfg).__name__}"]
    out = []
    for k in REQUIRED_CONFIG_KEYS:
        v = cfg.get(k)
        if v is None:
            out.append(f"config: missing key '{k}'")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append(f"config: key '{k}' must be a number, found {v!r}")
        elif k in INT_CONFIG_KEYS and (float(v) != int(v) or v <= 0):
            out.append(f"config: key '{k}' must be a positive integer, found {v!r}")
    if out:
        return out
    g = {k: int(cfg[k]) for k in INT_CONFIG_KEYS}
    if g["input_size"] % g["patch_size"]:
        out.append(f"config: input_size {g['input_size']} is not divisible by patch_size {g['patch_size']}")
    if g["hidden_size"] % g["num_heads"]:
        out.append(f"config: num_heads {g['num_heads']} does not divide hidden_size {g['hidden_size']}")
    if g["decoder_hidden_size"] % g["decoder_num_heads"]:
        out.append(f"config: decoder_num_heads {g['decoder_num_heads']} does not divide "
                   f"decoder_hidden_size {g['decoder_hidden_size']}")
    for k in ("hidden_size", "decoder_hidden_size"):
        if g[k] % 4:
            out.append(f"config: {k} {g[k]} must be a multiple of 4 (2-D sin-cos embedding)")
    if not cfg["mlp_ratio"] > 0:
        out.append(f"config: mlp_ratio must be positive, found {cfg['mlp_ratio']}")
    for k in ("sigma_data", "sigma_min", "sigma_max", "tau_s", "tau_t"):
        if not (cfg[k] > 0 and np.isfinite(cfg[k])):
            out.append(f"config: {k} must be positive and finite, found {cfg[k]}")
    for k in ("ema_beta", "center_momentum"):
        if not 0 <= cfg[k] <= 1:
            out.append(f"config: {k} must lie in [0, 1], found {cfg[k]}")
    return out


def load_config(spec):
    """A config dict from a preset name, a .json file, inline JSON, or an exchange .h5 file."""
    if isinstance(spec, Mapping):
        cfg = dict(spec)
    elif spec.lstrip().startswith("{"):
        cfg = json.loads(spec)
    elif os.path.isfile(spec) and spec.endswith((".h5", ".hdf5")):
        import h5py
        with h5py.File(spec, "r") as f:
            raw = f.attrs.get("config")
            if raw is None:
                raise ExchangeError(f"{spec}: root attribute 'config' is missing")
            cfg = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    elif os.path.isfile(spec):
        with open(spec) as fh:
            cfg = json.load(fh)
    else:
        return preset(spec)
    probs = config_problems(cfg)
    if probs:
        raise ExchangeError(f"{spec if isinstance(spec, str) else 'config'}: " + "; ".join(probs))
    return cfg


def param_shapes(cfg, part="student"):
    """{SPEC key: shape tuple} in forward order; part = "student" (encoder + decoder + head)
    or "teacher" (encoder + head)."""
    if part not in ("student", "teacher"):
        raise ValueError(f"part must be 'student' or 'teacher', found {part!r}")
    D, C, p = int(cfg["hidden_size"]), int(cfg["in_channels"]), int(cfg["patch_size"])
    T = (int(cfg["input_size"]) // p) ** 2
    S = {"x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
         "pos_embed": (1, 1 + T, D), "cls_token": (1, 1, D),
         "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
         "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
         "y_embedder.embedding_table.weight": (int(cfg["num_classes"]) + 1, D)}

    def blocks(prefix, n, W):
        hm = int(W * cfg["mlp_ratio"])
        for i in range(int(n)):
            b = f"{prefix}.{i}."
            S.update({b + "attn.qkv.weight": (3 * W, W), b + "attn.qkv.bias": (3 * W,),
                      b + "attn.proj.weight": (W, W), b + "attn.proj.bias": (W,),
                      b + "mlp.fc1.weight": (hm, W), b + "mlp.fc1.bias": (hm,),
                      b + "mlp.fc2.weight": (W, hm), b + "mlp.fc2.bias": (W,),
                      b + "adaLN_modulation.1.weight": (6 * W, D),
                      b + "adaLN_modulation.1.bias": (6 * W,)})

    blocks("blocks", cfg["depth"], D)
    if part == "student":
        Dd = int(cfg["decoder_hidden_size"])
        S.update({"decoder_layer.adaLN_modulation.1.weight": (2 * D, D),
                  "decoder_layer.adaLN_modulation.1.bias": (2 * D,),
                  "decoder_layer.linear.weight": (Dd, D), "decoder_layer.linear.bias": (Dd,),
                  "decoder_pos_embed": (1, T, Dd)})
        blocks("decoder_blocks", cfg["decoder_depth"], Dd)
        S.update({"final_layer.adaLN_modulation.1.weight": (2 * Dd, D),
                  "final_layer.adaLN_modulation.1.bias": (2 * Dd,),
                  "final_layer.linear.weight": (p * p * C, Dd),
                  "final_layer.linear.bias": (p * p * C,)})
    Hh, B, K = int(cfg["head_hidden_dim"]), int(cfg["head_bottleneck_dim"]), int(cfg["head_out_dim"])
    S.update({"head.mlp.0.weight": (Hh, D), "head.mlp.0.bias": (Hh,),
              "head.mlp.2.weight": (Hh, Hh), "head.mlp.2.bias": (Hh,),
              "head.mlp.4.weight": (B, Hh), "head.mlp.4.bias": (B,),
              "head.last_layer.weight_g": (K, 1), "head.last_layer.weight_v": (K, B)})
    return S


def grad_shapes(cfg):
    """{key: shape} of /grads: the student parameters minus the fixed tensors."""
    return {k: s for k, s in param_shapes(cfg, "student").items() if k not in FIXED_KEYS}


def activation_names(cfg):
    """SPEC section 7 activation names, in forward order."""
    d, dd = int(cfg["depth"]), int(cfg["decoder_depth"])
    return (["student.tokens", "student.c"] + [f"student.enc.block.{i}" for i in range(d)]
            + ["student.dec.in"] + [f"student.dec.block.{i}" for i in range(dd)]
            + ["student.F", "student.D", "student.head.cls", "student.head.patch"]
            + [f"teacher.enc.block.{i}" for i in range(d)] + ["teacher.head.cls", "teacher.head.patch"])


def activation_shapes(cfg, N, V):
    """{name: shape} for batch N with V visible tokens per sample."""
    D, Dd, K, C, H = (int(cfg[k]) for k in ("hidden_size", "decoder_hidden_size", "head_out_dim",
                                             "in_channels", "input_size"))
    T = (H // int(cfg["patch_size"])) ** 2
    S = {"student.tokens": (N, T, D), "student.c": (N, D), "student.dec.in": (N, T, D),
         "student.F": (N, C, H, H), "student.D": (N, C, H, H),
         "student.head.cls": (N, K), "student.head.patch": (N, V, K),
         "teacher.head.cls": (N, K), "teacher.head.patch": (N, V, K)}
    for i in range(int(cfg["depth"])):
        S[f"student.enc.block.{i}"] = (N, 1 + V, D)
        S[f"teacher.enc.block.{i}"] = (N, 1 + T, D)
    for i in range(int(cfg["decoder_depth"])):
        S[f"student.dec.block.{i}"] = (N, T, Dd)
    return {n: S[n] for n in activation_names(cfg)}


# ---------------------------------------------------------------------------------------
# Arrays and state_dicts
# ---------------------------------------------------------------------------------------

def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def capture(x):
    """A detached CPU copy of a torch tensor with its dtype kept (bfloat16 stays bfloat16):
    what hooks store and what manual captures should store; write_exchange takes it as is."""
    return x.detach().to("cpu", copy=True)


def _is_bfloat16(x):
    if _is_torch(x):
        return str(x.dtype) == "torch.bfloat16"
    return getattr(getattr(x, "dtype", None), "name", None) == "bfloat16"  # ml_dtypes


def to_numpy(x, dtype=None):
    """A numpy array from a numpy array, a torch tensor (detached, on the CPU) or a scalar.
    Float16 stays float16; bfloat16 (which numpy and HDF5 lack) becomes float32, exactly."""
    if _is_torch(x):
        t = x.detach().cpu()
        if _is_bfloat16(t):
            t = t.float()
        a = t.numpy()
    else:
        a = np.asarray(x)
        if _is_bfloat16(a):
            a = a.astype(np.float32)
    return a.astype(dtype, copy=False) if dtype is not None else a


def _to_float64(x):
    if _is_torch(x):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def normalize_key(name, rename=None):
    """Strips wrapper prefixes (module., _orig_mod., model.; repeatedly), applies `rename`
    ({old prefix: new prefix}) and maps torch.nn.utils.parametrizations.weight_norm names
    (X.parametrizations.weight.original0 / original1) to X.weight_g / X.weight_v."""
    k = name
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if k.startswith(p):
                k, changed = k[len(p):], True
    for old, new in (rename or {}).items():
        if k.startswith(old):
            k = new + k[len(old):]
            break
    for suffix, repl in ((".parametrizations.weight.original0", ".weight_g"),
                         (".parametrizations.weight.original1", ".weight_v")):
        if k.endswith(suffix):
            k = k[: -len(suffix)] + repl
    return k


def _student_only(key):
    return key.startswith(("decoder_layer.", "decoder_blocks.", "decoder_pos_embed", "final_layer."))


def convert_part(state_dict, cfg, part="student", rename=None, strict=True):
    """One part of convert_state_dict: {SPEC key: float64 array} for part student/teacher.

    A teacher state_dict may be an EMA of the whole student: its decoder and final-layer keys
    are dropped. With strict=False, other unexpected keys are dropped too (missing or
    misshaped keys are always an error)."""
    expected = param_shapes(cfg, part)
    out, origin, unexpected, misshaped = {}, {}, [], []
    for name, value in state_dict.items():
        k = normalize_key(name, rename)
        if k in origin:
            raise ExchangeError(f"{part}: '{name}' and '{origin[k]}' both map to '{k}'")
        origin[k] = name
        shape = tuple(int(s) for s in getattr(value, "shape", np.shape(value)))
        if k not in expected:
            if not (part == "teacher" and _student_only(k)) and strict:
                unexpected.append((name if k == name else f"{name} (as {k})", shape))
            continue
        if shape != tuple(expected[k]):
            misshaped.append((k, expected[k], shape))
            continue
        out[k] = _to_float64(value)
    missing = [(k, s) for k, s in expected.items() if k not in out and k not in {m[0] for m in misshaped}]
    if missing or unexpected or misshaped:
        hints = []
        T = (int(cfg["input_size"]) // int(cfg["patch_size"])) ** 2
        for k, e, f in misshaped:
            if k == "pos_embed" and f[1:2] == (T,):
                hints.append("pos_embed has no CLS row: SPEC wants [1, 1+T, D] with a zero row 0 "
                             "(prepend it: np.concatenate([np.zeros((1,1,D)), pe], 1))")
            if k == "y_embedder.embedding_table.weight" and f[:1] == (e[0] - 1,):
                hints.append("the label table needs the null-label row (num_classes + 1 rows)")
        if any(n.split(" ")[0].endswith("last_layer.weight") for n, _ in unexpected):
            hints.append("SPEC wants the weight-normalized last layer: weight_g / weight_v "
                         "(or parametrizations.weight.original0 / original1), not a fused weight")
        if missing and all(k.startswith("head.") for k, _ in missing) and unexpected:
            hints.append("is the DINO head under another name? map it with rename={'old.': 'head.'} "
                         "(CLI: --rename old.=head.)")
        raise StateDictError(part, missing, unexpected, misshaped, hints)
    return {k: out[k] for k in expected}


def convert_state_dict(state_dict, cfg, teacher_state_dict=None, rename=None, strict=True):
    """A PyTorch state_dict (name -> tensor or numpy array) as {SPEC key: float64 array}.

    Strips the prefixes "module.", "_orig_mod.", "model."; maps the DINO head's
    `last_layer.parametrizations.weight.original0/1` (torch's weight_norm parametrization) to
    `head.last_layer.weight_g` / `weight_v`; checks that every expected key is there with
    its shape and raises StateDictError listing missing / unexpected / misshaped keys.
    Returns the student dict, or (student, teacher) when teacher_state_dict is given."""
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    params = convert_part(state_dict, cfg, "student", rename, strict)
    if teacher_state_dict is None:
        return params
    return params, convert_part(teacher_state_dict, cfg, "teacher", rename, strict)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def _dataset_array(path, value, precision):
    """(array, attrs) to store at `path` (relative to the root): int64 for integer inputs,
    float64 for parameters and inputs; results keep their floating type (float64, float32,
    float16; bfloat16 as its exact float32 values with attribute dtype = "bfloat16"), or
    float32 / float64 when precision says so, since the oracle picks tolerances from the
    stored type."""
    if path in INTEGER_PATHS:
        a = to_numpy(value)
        if a.dtype.kind == "f":
            if not np.all(a == np.round(a)):
                raise ExchangeError(f"/{path}: integer dataset holds non-integer values")
        return a.astype(np.int64), {}
    bf16 = _is_bfloat16(value)
    a = to_numpy(value)
    if a.dtype.kind not in "fiub":
        raise ExchangeError(f"/{path}: cannot store dtype {a.dtype}")
    result = path.split("/")[0] in RESULT_GROUPS and not path.startswith(("sampler/x_init", "sampler/sigmas"))
    if not result or precision == "float64":
        return a.astype(np.float64), {}
    if bf16:
        return a.astype(np.float32), {"dtype": "bfloat16"}
    if precision == "float32":
        return a.astype(np.float32), {}
    if a.dtype in (np.float32, np.float16):
        return a, {}
    return a.astype(np.float64), {}


def _flatten(group, tree, out):
    for k, v in tree.items():
        p = f"{group}/{k}" if group else str(k)
        if isinstance(v, Mapping):
            _flatten(p, v, out)
        else:
            out[p] = v


def write_exchange(path, cfg, params, teacher=None, inputs=None, activations=None, losses=None,
                   grads=None, after_step=None, sampler=None, precision="auto", check=True,
                   precision_mode=None):
    """Writes an exchange file atomically (a temporary file beside `path`, then os.replace).

    cfg: config dict (stored as the root attribute `config`, json.dumps). params / teacher /
    grads: {SPEC key: array}; inputs: {x0, labels, sigma_s, noise_s, noise_t, mask,
    center_cls, center_patch, step}; activations: {SPEC name: array}; losses: {generative,
    dis_cls, dis_patch, total} (floats or 0-d tensors); after_step: {"params": {...},
    "teacher": {...}, "center_cls": .., "center_patch": ..}; sampler: {x_init, labels, sigmas,
    "x.0", ..., out}. Arrays may be numpy arrays or torch tensors.

    Types: labels, mask, step (and sampler labels) are int64; parameters and inputs float64;
    results (activations, losses, grads, after_step, sampler states) keep their dtype:
    float32 stays float32, float16 float16, float64 float64, and bfloat16 (which HDF5 and
    numpy lack) is stored as its float32 values (exact) with the dataset attribute
    dtype = "bfloat16"; anything else (Python floats, integers) becomes float64.
    precision="float32" stores every result as float32 (a float32 run whose losses came as
    Python floats); precision="float64" widens everything. The oracle picks its tolerances
    from the stored type (a float64 dataset holding only float32 values is recognized and judged
    as float32, with a note; declare precision_mode all the same).

    precision_mode: how the run computed (one of PRECISION_MODES: float64, float32, tf32,
    tf32-conv, fp16-autocast, bf16-autocast, fp16-pure, bf16-pure); stored as the root attribute
    `precision_mode` when given.

    With check=True the written file is validated (check_file) before it replaces `path`;
    any problem raises ExchangeError and leaves `path` untouched; the check's warnings (e.g. a
    config key the oracle would fill in with a default) are issued with warnings.warn.
    after_step without the AdamW keys (lr, adam_beta1, adam_beta2, adam_eps, weight_decay) in
    cfg is an error: the oracle would judge the step under SPEC's defaults."""
    import h5py
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"precision must be auto, float32 or float64, found {precision!r}")
    if precision_mode is not None and precision_mode not in PRECISION_MODES:
        raise ExchangeError(f"precision_mode {precision_mode!r} is not one of: {', '.join(PRECISION_MODES)}")
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    probs = config_problems(cfg)
    if probs:
        raise ExchangeError("; ".join(probs))
    tree = {"params": params, "teacher": teacher, "inputs": inputs, "activations": activations,
            "losses": losses, "grads": grads, "after_step": after_step, "sampler": sampler}
    flat = {}
    for g, t in tree.items():
        if t is not None:
            if not isinstance(t, Mapping):
                raise ExchangeError(f"{g}: expected a dict, found {type(t).__name__}")
            _flatten(g, t, flat)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["config"] = json.dumps(cfg, sort_keys=True)
            if precision_mode is not None:
                f.attrs["precision_mode"] = precision_mode
            for g in tree:
                if tree[g] is not None:
                    f.require_group(g)
            for p, v in flat.items():
                a, attrs = _dataset_array(p, v, precision)
                d = f.create_dataset(p, data=a)
                for k, val in attrs.items():
                    d.attrs[k] = val
        if check:
            notes = []
            probs = check_file(tmp, warnings=notes)
            if probs:
                raise ExchangeError(f"{path}: not written, {len(probs)} problems:\n  " + "\n  ".join(probs))
            if notes:
                import warnings as _w
                for n in notes:
                    _w.warn(f"{path}: {n}", stacklevel=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# PyTorch forward hooks
# ---------------------------------------------------------------------------------------

def _core(model):
    """The module that holds `blocks`, looking through DDP (.module), torch.compile
    (._orig_mod) and EDM-style preconditioning wrappers (.model)."""
    m = model
    for _ in range(8):
        if hasattr(m, "blocks"):
            return m
        nxt = next((getattr(m, a) for a in ("module", "_orig_mod", "model", "net") if hasattr(m, a)), None)
        if nxt is None:
            break
        m = nxt
    raise ExchangeError(f"{type(model).__name__}: no `blocks` found (also looked in .module, "
                        "._orig_mod, .model, .net)")


def register_sddit_hooks(model, store, prefix="student"):
    """Records block outputs of a DiT / MaskDiT-structured model under SPEC section 7 names.

    Forward hooks (register_forward_hook) on `model.blocks[i]` store their output under
    f"{prefix}.enc.block.{i}" and, for prefix "student", on `model.decoder_blocks[i]` under
    "student.dec.block.{i}". Values are stored as detached CPU torch tensors with their dtype
    kept (capture(): a float32 model records float32, bf16 records bfloat16), so that
    write_exchange stores them at the precision the model ran in; each forward overwrites
    them (the last forward wins). Use prefix="teacher" on the teacher (EMA)
    encoder. Returns the handles: `for h in handles: h.remove()` when done.

    Expected shapes: student.enc.block.I [N, 1+V, D] (CLS first, then the visible tokens in
    ascending position order), teacher.enc.block.I [N, 1+T, D], student.dec.block.I [N, T, Dd].

    Names that hooks cannot see in general and need manual capture (store[name] =
    capture(tensor): dtype kept; widening to float64 would make a float32 run fail the
    float64 rule):
      student.tokens [N,T,D]   embed(c_in*x) + pos_embed[:, 1:] - the patch tokens before
                               masking: m.x_embedder(c_in * x_S) + m.pos_embed[:, 1:]
      student.c [N,D]          m.t_embedder(c_noise) + m.y_embedder(labels, False)
                               (train=False: no label dropout in an exchange run)
      student.dec.in [N,T,D]   the decoder input H before decoder_layer (SPEC section 2 step 7:
                               encoder outputs at visible positions, tokens at hidden ones);
                               a forward pre-hook on m.decoder_layer sees it as args[0]:
                               m.decoder_layer.register_forward_pre_hook(
                                   lambda mod, args: store.__setitem__("student.dec.in", capture(args[0])))
      student.F, student.D     the raw network output F (unpatchified, [N,C,H,W]) and the
                               preconditioned D = c_skip*x + c_out*F: values of your EDM
                               wrapper's forward (e.g. F = the inner model's output)
      student.head.cls/.patch, teacher.head.cls/.patch
                               the DINO head's logits [N,K] for CLS and [N,V,K] at the visible
                               positions (teacher: its [N,T,K] output gathered at the
                               student's visible positions), taken where your loss gets them.
    """
    store_fn = store.__setitem__
    m = _core(model)
    handles = []

    def rec(name):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            store_fn(name, capture(out))
        return hook

    for i, b in enumerate(m.blocks):
        handles.append(b.register_forward_hook(rec(f"{prefix}.enc.block.{i}")))
    if prefix == "student":
        for i, b in enumerate(getattr(m, "decoder_blocks", None) or []):
            handles.append(b.register_forward_hook(rec(f"{prefix}.dec.block.{i}")))
    return handles


# ---------------------------------------------------------------------------------------
# Loading checkpoints
# ---------------------------------------------------------------------------------------

def _is_array(v):
    return isinstance(v, np.ndarray) or _is_torch(v)


def load_checkpoint(path, trust_pickle=False):
    """A .pt / .pth / .bin (torch.load on the CPU) or .npz file as a (possibly nested) dict.
    In an .npz, a key "teacher/blocks.0.attn.qkv.weight" lands in sub-dict "teacher"."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                if "/" in k:
                    g, rest = k.split("/", 1)
                    out.setdefault(g, {})[rest] = z[k]
                else:
                    out[k] = z[k]
            return out
    try:
        import torch
    except ImportError:
        raise ExchangeError(f"{path}: loading a torch checkpoint needs torch (pip install torch), "
                            "or save it as .npz: np.savez(f, **{k: v.cpu().numpy() for k, v in sd.items()})")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises several types here
        if trust_pickle:
            raise
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [type(e).__name__])[0])[:160]
        raise ExchangeError(f"{path}: torch.load(weights_only=True) failed ({first}); "
                            "if you trust this file, pass --trust-pickle")


def select_state_dict(obj, key=None, what="student"):
    """The state_dict inside a loaded checkpoint: obj[key] (also "a.b" for nested keys), else
    the first of model / student / state_dict / net that is a dict, else the array entries."""
    if key:
        cur = obj
        for part in key.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                have = ", ".join(map(str, cur.keys())) if isinstance(cur, Mapping) else type(cur).__name__
                raise ExchangeError(f"{what}: key '{key}' not in the checkpoint (top-level keys: {have})")
            cur = cur[part]
        if not isinstance(cur, Mapping):
            raise ExchangeError(f"{what}: checkpoint['{key}'] is {type(cur).__name__}, not a state_dict")
        obj = cur
    elif isinstance(obj, Mapping) and not any(_is_array(v) for v in obj.values()):
        for k in ("model", "student", "state_dict", "net"):
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping):
        raise ExchangeError(f"{what}: the checkpoint is {type(obj).__name__}, not a state_dict")
    sd = {k: v for k, v in obj.items() if _is_array(v)}
    if not sd:
        raise ExchangeError(f"{what}: no tensors found (keys: {', '.join(map(str, obj.keys()))}); "
                            "name the sub-dict with --student-key / --teacher-key")
    return sd


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

def _cmd_convert(a):
    cfg = load_config(a.config)
    rename = {}
    for r in a.rename or []:
        if "=" not in r:
            raise ExchangeError(f"--rename wants OLD=NEW, found '{r}'")
        old, new = r.split("=", 1)
        rename[old] = new
    ck = load_checkpoint(a.state_dict, a.trust_pickle)
    student_sd = select_state_dict(ck, a.student_key, "student")
    teacher_sd = None
    if a.ema:
        teacher_sd = select_state_dict(load_checkpoint(a.ema, a.trust_pickle), a.teacher_key, "teacher")
    elif a.teacher_key:
        teacher_sd = select_state_dict(ck, a.teacher_key, "teacher")
    params = convert_part(student_sd, cfg, "student", rename, not a.non_strict)
    teacher = None
    if teacher_sd is not None:
        teacher = convert_part(teacher_sd, cfg, "teacher", rename, not a.non_strict)
    elif a.teacher_from_student:
        teacher = {k: params[k].copy() for k in param_shapes(cfg, "teacher")}
    write_exchange(a.out, cfg, params, teacher=teacher)
    n = sum(v.size for v in params.values())
    print(f"wrote {a.out}: {len(params)} student tensors ({n:,} values)"
          + (f", {len(teacher)} teacher tensors" if teacher else ", no teacher"))
    return 0


def _precision_mode(path):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return _attr_str(f.attrs.get("precision_mode"))
    except OSError:
        return None


def _cmd_check(a):
    bad = 0
    for p in a.files:
        notes = []
        probs = check_file(p, warnings=notes)
        for line in probs:
            print(f"{p}: {line}")
        for line in notes:
            print(f"{p}: warning: {line}")
        pm = _precision_mode(p)
        mode = f" (precision_mode {pm})" if pm in PRECISION_MODES else ""
        if not probs:
            print(f"{p}: ok{mode}" if not notes else
                  f"{p}: ok as a layout, {len(notes)} warning{'s' if len(notes) > 1 else ''}{mode}")
        bad += bool(probs) or (a.strict and bool(notes))
    return 1 if bad else 0


def _cmd_shapes(a):
    cfg = load_config(a.config)
    for k, s in param_shapes(cfg, a.part).items():
        print(f"{k} {list(s)}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="sddit_h5.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="a PyTorch state_dict (.pt or .npz) -> an exchange file with /params")
    c.add_argument("--state-dict", required=True, help="checkpoint: .pt/.pth/.bin (needs torch) or .npz")
    c.add_argument("--config", required=True, help="tiny, S/2, B/2, XL/2, a config .json, or an exchange .h5")
    c.add_argument("--out", required=True, help="exchange file to write")
    c.add_argument("--student-key", help="sub-dict holding the student (default: model/student/state_dict/net)")
    c.add_argument("--teacher-key", help="sub-dict holding the teacher (in --ema if given, else in --state-dict)")
    c.add_argument("--ema", help="a separate checkpoint holding the teacher (EMA) weights")
    c.add_argument("--teacher-from-student", action="store_true",
                   help="no teacher checkpoint: copy the student's encoder + head (SPEC: step 0)")
    c.add_argument("--rename", action="append", metavar="OLD=NEW",
                   help="rename a key prefix after stripping wrappers, e.g. dino_head.=head. (repeatable)")
    c.add_argument("--non-strict", action="store_true", help="drop unexpected keys instead of failing")
    c.add_argument("--trust-pickle", action="store_true", help="torch.load with weights_only=False")
    c.set_defaults(fn=_cmd_convert)
    k = sub.add_parser("check", help="validate exchange files; one line per problem, exit 1 if any")
    k.add_argument("files", nargs="+")
    k.add_argument("--strict", action="store_true", help="warnings count as problems (exit 1)")
    k.set_defaults(fn=_cmd_check)
    s = sub.add_parser("shapes", help="print the SPEC parameter keys and shapes of a config")
    s.add_argument("--config", required=True)
    s.add_argument("--part", choices=("student", "teacher"), default="student")
    s.set_defaults(fn=_cmd_shapes)
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (ExchangeError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
