"""PyTorch state_dicts and checkpoints to SPEC keys: key normalization, shape checks,
float64 conversion, and the dtype-keeping copies (capture, to_numpy) the writer takes."""

import re
from collections.abc import Mapping

import numpy as np

from .spec import STRIP_PREFIXES, ExchangeError, StateDictError, load_config, param_shapes


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
    """A float64 copy (never a view: a float64 parameter changes in place at the step)."""
    if _is_torch(x):
        return np.array(x.detach().cpu().double().numpy(), dtype=np.float64)
    return np.array(x, dtype=np.float64)


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
