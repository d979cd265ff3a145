"""SPEC section 7 in Python: the format name, config keys and presets, parameter and
activation shapes, the precision modes, and the errors every module raises."""

import json
import os
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
