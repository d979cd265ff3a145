#!/usr/bin/env python3
"""One SD-DiT training step in PyTorch, independent of the Swift code, in a chosen precision.

Purpose: measure how far a correct implementation running in a given precision mode lands
from the float64 truth (so the oracle's calibration limits are measured, not guessed), and
plant known bugs into files that do not come from the Swift fast path.

The model is a plain functional assembly of SPEC.md sections 2-5 over a dict of tensors
keyed by the SPEC state_dict names. It is adapted from the PyTorch peer
(shared/peer/peer_bench.py: encoder / decoder / objective / train_step, and how its
check_file reads an exchange file), with these changes: linear layers, the patch embedding
(as a linear map of each flattened patch) and both attention products go through one
helper so that TF32 operand rounding can wrap them forward and backward; attention is
written out (softmax(q k^T / sqrt(d)) v, no fused kernel) so that a bug can drop the
scale; per-block switches plant bugs. Nothing is imported from ../shared.

    python tools/independent_step.py --setup ref.h5 --mode float32 --out run.h5
    python tools/independent_step.py --setup ref.h5 --mode bf16-autocast --bug ln-eps:0 --out bug.h5
    oracle diff --a run.h5 --b ref
    python tools/independent_step.py --plan runs.txt   # one argument line per run, one process

--setup: an exchange file (SPEC section 7) with config, /params, /teacher and /inputs
(e.g. `oracle dump --backend ref --config tiny --seed 0 --mask-ratio 0.5 --sample 0`).
The output file copies that setup (float64, unchanged) and records the activations, losses,
grads of the trainable parameters and /after_step (params, teacher, centers) of one step,
every result in the dtype this mode produced it in (bfloat16 as exact float32 values
tagged dtype="bfloat16"), root attribute precision_mode = --mode.

Modes:
  float64        everything float64 (a sanity check: must pass the float64 rule)
  float32        parameters, inputs and all arithmetic float32
  tf32           float32, but every matmul / linear / patch-embedding operand is rounded
                 to TF32 (10-bit mantissa, round to nearest even, by bit manipulation),
                 products accumulated in float32; in the backward pass each product's
                 operands (grad_output and the saved, rounded forward operand) are rounded too
  bf16-autocast  float32 parameters and AdamW; forward and losses under
  fp16-autocast  torch.autocast("cpu", dtype); fp16 also scales the loss (2^16, halved and
                 retried while any gradient is non-finite, as torch's GradScaler would over
                 steps) and unscales before AdamW. --autocast-style cuda additionally runs
                 layer_norm, softmax, log_softmax, the L2 norms and the loss arithmetic in
                 float32, as CUDA's autocast policy does (CPU autocast runs them in the low
                 precision)
  bf16-pure      parameters, inputs, teacher, centers, activations, gradients and AdamW
  fp16-pure      state all in that dtype (fp16: loss scaled as above, and the AdamW update
                 computed in float32 from the float16 gradient, rounded back to float16:
                 torch's AdamW in float16 turns eps 1e-8 into 0 and gives 0/0 = NaN wherever
                 a gradient underflowed to 0)

Planted bugs (--bug, repeatable, composable; each lives in the computation, forward and
backward through autograd: the recorded config keeps the setup's values). BLOCK is an encoder
block index (student and teacher) or `all`: every DiT block (encoder blocks of student and
teacher and the decoder blocks; for ln-eps also decoder_layer's and final_layer's norm):
  ln-eps:BLOCK       LayerNorm eps 1e-5 (torch's default) instead of 1e-6 in that block's norms
  gelu-exact:BLOCK   exact (erf) GELU in that block's MLP instead of the tanh approximation
  no-sqrt-d:BLOCK    attention logits without 1/sqrt(head_dim) in that block
  shift-scale:BLOCK  modulate's shift and scale swapped in that block
  c-noise-ln         c_noise = ln(sigma) instead of ln(sigma)/4 (student and teacher)
  temb-sin-first     timestep frequency embedding [sin, cos] instead of [cos, sin]
  mask-token         decoder input at hidden positions a zero vector (MaskDiT's zero-initialised
                     mask token) instead of the embedded noised tokens
  head-gelu-tanh     the projection head's two GELUs tanh-approximated (student and teacher)
  unpatchify-cij     unpatchify reads each token vector in (c, i, j) order instead of (i, j, c)
  teacher-clean      teacher view x_T = x0 (no sigma_T n_T); preconditioning still at sigma_T
  edm-no-weight      generative loss without lambda(sigma): mean of (D - x0)^2
  tau-t:X, tau-s:X   teacher / student temperature X instead of the config's
  tau-swap           DINO student and teacher temperatures swapped (after tau-t / tau-s)
  no-centering       teacher softmax without subtracting the centers (centers still updated)
  center-before-loss centers updated first; the DINO losses use the updated centers
  center-momentum:M  center update with momentum M
  weight-g-trained   head.last_layer.weight_g trained: a gradient (in /grads) and the AdamW update
  frozen:PREFIX      parameters whose key starts with PREFIX not trained (no gradient recorded,
                     after_step unchanged); repeatable
  lr:X, weight-decay:X, adam-eps:X, betas:B1,B2
                     AdamW with that value (betas: no effect at a first step beyond rounding)
  lr10               lr:(config lr / 10)
  no-bias-correction Adam's m and v not bias-corrected
  ema-before-step    the EMA uses the student parameters from before the AdamW step
  ema-reversed       teacher <- (1 - beta) teacher + beta student
  ema-beta:X         the EMA with beta X
An unknown or malformed bug, or one value set twice differently (lr10 with lr:X): one line, exit 2.
The file's root attribute planted_bugs lists them (comma-separated; "none").
"""

import argparse
import json
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sddit_h5 as sx  # noqa: E402

MODES = ("float64", "float32", "tf32", "bf16-autocast", "fp16-autocast", "bf16-pure", "fp16-pure")
FIXED = ("pos_embed", "decoder_pos_embed", "head.last_layer.weight_g")
BLOCK_BUGS = ("ln-eps", "gelu-exact", "no-sqrt-d", "shift-scale")          # NAME:BLOCK or NAME:all
GLOBAL_BUGS = ("tau-swap", "lr10", "c-noise-ln", "temb-sin-first", "mask-token", "head-gelu-tanh",
               "unpatchify-cij", "teacher-clean", "edm-no-weight", "no-centering", "center-before-loss",
               "weight-g-trained", "no-bias-correction", "ema-before-step", "ema-reversed")
# NAME:X with X a number: (lowest allowed, highest allowed, lowest included)
VALUE_BUGS = {"tau-t": (0.0, math.inf, False), "tau-s": (0.0, math.inf, False),
              "center-momentum": (0.0, 1.0, True), "lr": (0.0, math.inf, False),
              "weight-decay": (0.0, math.inf, True), "adam-eps": (0.0, math.inf, False),
              "ema-beta": (0.0, 1.0, True)}
OTHER_BUGS = ("betas:B1,B2", "frozen:PREFIX")


class BugError(Exception):
    """A --bug value that is unknown or malformed (one line, exit 2)."""


class Bugs:
    """The planted bugs of one run, parsed and checked once against the setup's config and
    parameter keys. None of them touches the recorded config: each lives in the computation."""

    def __init__(self, specs, cfg, keys):
        self.specs = list(specs)
        self.blocks, self.flags, self.values, self.frozen = {}, set(), {}, []
        depth = int(cfg["depth"])
        for b in self.specs:
            name, colon, arg = b.partition(":")
            if name in BLOCK_BUGS and (arg == "all" or (arg.isdigit() and int(arg) < depth)):
                self.blocks.setdefault(name, set()).add(arg if arg == "all" else int(arg))
            elif name in GLOBAL_BUGS and not colon:
                self.flags.add(name)
            elif name in VALUE_BUGS and arg:
                lo, hi, lo_ok = VALUE_BUGS[name]
                try:
                    x = float(arg)
                except ValueError:
                    raise BugError(f"--bug {b!r}: {arg!r} is not a number") from None
                if not (math.isfinite(x) and (lo <= x if lo_ok else lo < x) and x <= hi):
                    raise BugError(f"--bug {b!r}: {name} must lie in {'[' if lo_ok else '('}{lo:g}, "
                                   + (f"{hi:g}]" if math.isfinite(hi) else "inf)"))
                self._value(b, name, x)
            elif name == "betas" and arg:
                try:
                    b1, b2 = (float(v) for v in arg.split(","))
                except ValueError:
                    raise BugError(f"--bug {b!r}: expected betas:B1,B2 (two numbers)") from None
                if not all(0.0 <= v < 1.0 for v in (b1, b2)):
                    raise BugError(f"--bug {b!r}: each beta must lie in [0, 1)")
                self._value(b, name, (b1, b2))
            elif name == "frozen" and arg:
                self.frozen.append(arg)
            else:
                raise BugError(
                    f"--bug {b!r}: expected one of {', '.join(n + ':BLOCK' for n in BLOCK_BUGS)} with "
                    f"BLOCK < depth {depth} or all, {', '.join(GLOBAL_BUGS)}, "
                    f"{', '.join(n + ':X' for n in VALUE_BUGS)}, {', '.join(OTHER_BUGS)}")
        for pre in self.frozen:
            if not any(k.startswith(pre) and self.trainable(k, frozen=False) for k in keys):
                raise BugError(f"--bug 'frozen:{pre}': no trained parameter key starts with {pre!r}")
        if "lr10" in self.flags:
            self._value("lr10", "lr", cfg.get("lr", 1e-4) / 10.0)
        if keys and not any(self.trainable(k) for k in keys):
            raise BugError(f"--bug {','.join(self.specs)}: no parameter left to train")

    def _value(self, spec, name, x):
        if name in self.values and self.values[name] != x:
            raise BugError(f"--bug {spec!r}: {name} is already set to {self.values[name]} by another --bug")
        self.values[name] = x

    def __contains__(self, flag):
        return flag in self.flags

    def value(self, name, default):
        return self.values.get(name, default)

    def block(self, name, where):
        """Whether block bug `name` acts at `where`: ("enc", i) an encoder block (student and
        teacher), ("dec", i) a decoder block, "layer" decoder_layer's and final_layer's norm."""
        s = self.blocks.get(name, ())
        return "all" in s or (where[0] == "enc" and where[1] in s)

    def trainable(self, k, frozen=True):
        """Whether student parameter k gets a gradient and the AdamW update."""
        if k in FIXED and not (k == "head.last_layer.weight_g" and "weight-g-trained" in self):
            return False
        return not (frozen and any(k.startswith(p) for p in self.frozen))


# ======================================================================================
# TF32 operand rounding
# ======================================================================================

def round_tf32(x):
    """float32 -> the nearest TF32 value (10 explicit mantissa bits, ties to even), still
    stored as float32. Non-finite values pass through."""
    assert x.dtype == torch.float32, x.dtype
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (b >> 13) & 1
    r = (b + 0x0FFF + lsb) & 0xFFFFE000
    r = torch.where(r >= 2 ** 31, r - 2 ** 32, r).to(torch.int32).view(torch.float32)
    return torch.where(torch.isfinite(x), r, x)


class TF32Matmul(torch.autograd.Function):
    """a @ b with both operands rounded to TF32, float32 accumulation; backward products
    round their operands too (grad_output and the rounded forward operands). a, b: 2-D, or
    batched with equal batch dimensions."""

    @staticmethod
    def forward(ctx, a, b):
        ra, rb = round_tf32(a), round_tf32(b)
        ctx.save_for_backward(ra, rb)
        return ra @ rb

    @staticmethod
    def backward(ctx, g):
        ra, rb = ctx.saved_tensors
        rg = round_tf32(g)
        return rg @ rb.transpose(-1, -2), ra.transpose(-1, -2) @ rg


# ======================================================================================
# The model (SPEC sections 2-5)
# ======================================================================================

class Net:
    def __init__(self, cfg, mode, bugs, autocast_style="cpu"):
        self.cfg, self.mode = cfg, mode
        self.tf32 = mode == "tf32"
        self.f32ops = mode.endswith("autocast") and autocast_style == "cuda"
        self.bugs = bugs if isinstance(bugs, Bugs) else Bugs(bugs, cfg, ())

    # -- primitives --------------------------------------------------------------------
    def mm(self, a, b):
        if self.tf32:
            return TF32Matmul.apply(a, b)
        return a @ b

    def lin(self, P, k, x, bias=True):
        W = P[k + ".weight"]
        if not self.tf32:
            return F.linear(x, W, P[k + ".bias"] if bias else None)
        y = self.mm(x.reshape(-1, x.shape[-1]), W.t()).reshape(*x.shape[:-1], W.shape[0])
        return y + P[k + ".bias"] if bias else y

    def f32(self, x):
        """CUDA-style autocast: this op's input in float32."""
        return x.float() if self.f32ops else x

    def ln(self, x, eps=1e-6):
        return F.layer_norm(self.f32(x), x.shape[-1:], eps=eps)

    def softmax(self, x):
        return F.softmax(self.f32(x), dim=-1)

    @staticmethod
    def mod(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    # -- blocks --------------------------------------------------------------------------
    def block(self, P, b, x, c, heads, where):
        """One DiT block; where = ("enc", i) or ("dec", i), for the planted block bugs."""
        bug = lambda name: self.bugs.block(name, where)  # noqa: E731
        m = self.lin(P, b + "adaLN_modulation.1", F.silu(c)).chunk(6, dim=1)
        sh1, sc1, g1, sh2, sc2, g2 = m
        if bug("shift-scale"):
            sh1, sc1, sh2, sc2 = sc1, sh1, sc2, sh2
        eps = 1e-5 if bug("ln-eps") else 1e-6
        N, L, W = x.shape
        dh = W // heads
        qkv = self.lin(P, b + "attn.qkv", self.mod(self.ln(x, eps), sh1, sc1))
        q, k, v = qkv.reshape(N, L, 3, heads, dh).permute(2, 0, 3, 1, 4)
        logits = self.mm(q, k.transpose(-1, -2))
        if not bug("no-sqrt-d"):
            logits = logits * (1.0 / math.sqrt(dh))
        a = self.softmax(logits)
        a = a.to(v.dtype) if self.f32ops else a
        o = self.mm(a, v).transpose(1, 2).reshape(N, L, W)
        x = x + g1.unsqueeze(1) * self.lin(P, b + "attn.proj", o)
        exact = bug("gelu-exact")
        h = F.gelu(self.lin(P, b + "mlp.fc1", self.mod(self.ln(x, eps), sh2, sc2)),
                   approximate="none" if exact else "tanh")
        return x + g2.unsqueeze(1) * self.lin(P, b + "mlp.fc2", h)

    def conditioning(self, P, c_noise, y):
        half = 128
        f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=c_noise.dtype) / half)
        a = c_noise.reshape(-1, 1) * f.reshape(1, -1)
        temb = torch.cat([a.sin(), a.cos()] if "temb-sin-first" in self.bugs else [a.cos(), a.sin()], dim=1)
        temb = self.lin(P, "t_embedder.mlp.2", F.silu(self.lin(P, "t_embedder.mlp.0", temb)))
        return temb + P["y_embedder.embedding_table.weight"][y]

    def patch_embed(self, P, x):
        """Conv2d(C, D, p, stride p) as a linear map of each patch flattened in (c, i, j)
        order; tokens in row-major patch order."""
        N, C, H, W = x.shape
        p = self.cfg["patch_size"]
        h, w = H // p, W // p
        patches = x.reshape(N, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N, h * w, C * p * p)
        Wt = P["x_embedder.proj.weight"]
        Q = {"x_embedder.proj.weight": Wt.reshape(Wt.shape[0], -1), "x_embedder.proj.bias": P["x_embedder.proj.bias"]}
        return self.lin(Q, "x_embedder.proj", patches)

    def encoder(self, P, x_in, c_noise, y, ids_keep=None, acts=None, pre="student"):
        cfg = self.cfg
        N, D = x_in.shape[0], cfg["hidden_size"]
        tokens = self.patch_embed(P, x_in) + P["pos_embed"][:, 1:]
        c = self.conditioning(P, c_noise, y)
        h = tokens if ids_keep is None else torch.gather(
            tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        cls = (P["cls_token"] + P["pos_embed"][:, :1]).expand(N, -1, -1)
        h = torch.cat([cls.to(h.dtype), h], dim=1)
        for i in range(cfg["depth"]):
            h = self.block(P, f"blocks.{i}.", h, c, cfg["num_heads"], ("enc", i))
            if acts is not None:
                acts[f"{pre}.enc.block.{i}"] = sx.capture(h)
        if acts is not None and pre == "student":
            acts["student.tokens"], acts["student.c"] = sx.capture(tokens), sx.capture(c)
        return tokens, c, h

    def decoder(self, P, tokens, enc, c, ids_keep, acts=None):
        cfg = self.cfg
        N, D = tokens.shape[0], cfg["hidden_size"]
        e = enc[:, 1:]
        # hidden positions: the embedded noised tokens (SPEC 2.7), or with mask-token a zero
        # vector (MaskDiT's zero-initialised mask token)
        base = torch.zeros_like(tokens, dtype=e.dtype) if "mask-token" in self.bugs else tokens.to(e.dtype)
        H = e if ids_keep is None else base.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, D), e)
        if acts is not None:
            acts["student.dec.in"] = sx.capture(H)
        sh, sc = self.lin(P, "decoder_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
        eps = 1e-5 if self.bugs.block("ln-eps", "layer") else 1e-6
        z = self.lin(P, "decoder_layer.linear", self.mod(self.ln(H, eps), sh, sc)) + P["decoder_pos_embed"]
        for i in range(cfg["decoder_depth"]):
            z = self.block(P, f"decoder_blocks.{i}.", z, c, cfg["decoder_num_heads"], ("dec", i))
            if acts is not None:
                acts[f"student.dec.block.{i}"] = sx.capture(z)
        sh, sc = self.lin(P, "final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
        out = self.lin(P, "final_layer.linear", self.mod(self.ln(z, eps), sh, sc))
        g, p, C = cfg["input_size"] // cfg["patch_size"], cfg["patch_size"], cfg["in_channels"]
        if "unpatchify-cij" in self.bugs:  # token vector read as (c, i, j): nhwcpq -> nchpwq
            return out.reshape(N, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(N, C, g * p, g * p)
        return out.reshape(N, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, g * p, g * p)

    def head(self, P, x):
        approx = "tanh" if "head-gelu-tanh" in self.bugs else "none"
        h = F.gelu(self.lin(P, "head.mlp.0", x), approximate=approx)
        h = F.gelu(self.lin(P, "head.mlp.2", h), approximate=approx)
        h = F.normalize(self.f32(self.lin(P, "head.mlp.4", h)), dim=-1, p=2, eps=1e-12)
        v = P["head.last_layer.weight_v"]
        w = P["head.last_layer.weight_g"] * v / self.f32(v).norm(dim=1, keepdim=True).to(v.dtype)
        Q = {"head.last_layer.weight": w}
        return self.lin(Q, "head.last_layer", h, bias=False)

    def dino_H(self, t, s, center):
        tau_s, tau_t = self.bugs.value("tau-s", self.cfg["tau_s"]), self.bugs.value("tau-t", self.cfg["tau_t"])
        if "tau-swap" in self.bugs:
            tau_s, tau_t = tau_t, tau_s
        q = self.softmax((t if "no-centering" in self.bugs else t - center) / tau_t)
        return -(q * F.log_softmax(self.f32(s) / tau_s, dim=-1)).sum(-1).mean()

    def edm(self, sigma, sd):
        s = sigma.reshape(-1, 1, 1, 1)
        return sd ** 2 / (s ** 2 + sd ** 2), s * sd / (s ** 2 + sd ** 2).sqrt(), \
            1 / (sd ** 2 + s ** 2).sqrt(), s.log() if "c-noise-ln" in self.bugs else s.log() / 4

    def objective(self, P, TP, I, acts):
        """SPEC section 4: (total, losses, (new center_cls, new center_patch))."""
        cfg = self.cfg
        K, sd = cfg["head_out_dim"], cfg["sigma_data"]
        mask = I["mask"]
        ids_keep = None if not bool(mask.any()) else torch.nonzero(mask == 0)[:, 1].reshape(mask.shape[0], -1)
        x0, sigma, y = I["x0"], I["sigma_s"], I["labels"]
        s = sigma.reshape(-1, 1, 1, 1)
        x_s = x0 + I["noise_s"] * s
        c_skip, c_out, c_in, c_noise = self.edm(sigma, sd)
        tokens, c, enc = self.encoder(P, c_in * x_s, c_noise.flatten(), y, ids_keep, acts)
        Fx = self.decoder(P, tokens, enc, c, ids_keep, acts)
        D = c_skip * x_s + c_out * Fx
        if "edm-no-weight" in self.bugs:
            L_G = ((self.f32(D) - self.f32(x0)) ** 2).mean()
        else:
            lam = (s ** 2 + sd ** 2) / (s * sd) ** 2
            L_G = (self.f32(lam) * (self.f32(D) - self.f32(x0)) ** 2).mean()
        s_cls, s_patch = self.head(P, enc[:, 0]), self.head(P, enc[:, 1:])
        with torch.no_grad():
            sig_t = torch.full_like(sigma, cfg.get("sigma_t") or cfg["sigma_min"])
            _, _, tc_in, tc_noise = self.edm(sig_t, sd)
            x_t = x0 if "teacher-clean" in self.bugs else x0 + sig_t.reshape(-1, 1, 1, 1) * I["noise_t"]
            _, _, tenc = self.encoder(TP, tc_in * x_t, tc_noise.flatten(), y, None, acts, pre="teacher")
            tv = tenc[:, 1:] if ids_keep is None else torch.gather(
                tenc[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, tenc.shape[2]))
            t_cls, t_patch = self.head(TP, tenc[:, 0]), self.head(TP, tv)
            m = self.bugs.value("center-momentum", cfg["center_momentum"])
            cc, cp = I["center_cls"], I["center_patch"]
            new_cc = cc * m + t_cls.mean(0) * (1 - m)
            new_cp = cp * m + t_patch.reshape(-1, K).mean(0) * (1 - m)
            if "center-before-loss" in self.bugs:
                cc, cp = new_cc, new_cp
        L_cls = self.dino_H(t_cls, s_cls, cc)
        L_patch = self.dino_H(t_patch.reshape(-1, K), s_patch.reshape(-1, K), cp)
        total = L_G + L_cls + L_patch
        acts.update({"student.F": sx.capture(Fx), "student.D": sx.capture(D),
                     "student.head.cls": sx.capture(s_cls), "student.head.patch": sx.capture(s_patch),
                     "teacher.head.cls": sx.capture(t_cls), "teacher.head.patch": sx.capture(t_patch)})
        return total, {"generative": L_G, "dis_cls": L_cls, "dis_patch": L_patch, "total": total}, (new_cc, new_cp)


# ======================================================================================
# Reading a setup, one step, writing
# ======================================================================================

def read_setup(path):
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != sx.FORMAT:
            raise SystemExit(f"{path}: format {fmt!r}, expected {sx.FORMAT!r}")
        raw = f.attrs["config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        for g in ("params", "teacher", "inputs"):
            if g not in f:
                raise SystemExit(f"{path}: no /{g}: not a training-step setup")
        grp = lambda g: {k: f[g][k][()] for k in f[g]}  # noqa: E731
        return cfg, grp("params"), grp("teacher"), grp("inputs")


def parse_bugs(bugs, cfg, keys):
    """The parsed bugs; an unknown or malformed one: one line on stderr, exit 2."""
    try:
        return Bugs(bugs, cfg, keys)
    except BugError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


def adamw_step(params, lr, betas, eps, weight_decay, bias_correction=True):
    """The first AdamW step (zero moments) on params (their .grad set): torch's AdamW, or
    with bias_correction=False the same update with m and v not bias-corrected:
    p <- p (1 - lr wd) - lr m / (sqrt(v) + eps), m = (1 - b1) g, v = (1 - b2) g^2."""
    if bias_correction:
        torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False).step()
        return
    with torch.no_grad():
        for p in params:
            g = p.grad
            p.mul_(1 - lr * weight_decay)
            m, v = (1 - betas[0]) * g, (1 - betas[1]) * g * g
            p.add_(-lr * (m / (v.sqrt() + eps)))


def run_step(cfg, params, teacher, inputs, mode, bugs=(), autocast_style="cpu", threads=1):
    """One training step; returns (activations, losses, grads, after_step, info)."""
    torch.set_num_threads(threads)
    pdt = {"float64": torch.float64, "bf16-pure": torch.bfloat16, "fp16-pure": torch.float16}.get(mode, torch.float32)
    ac_dt = {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}.get(mode)
    fp16 = mode.startswith("fp16")
    bugs = bugs if isinstance(bugs, Bugs) else Bugs(bugs, cfg, list(params))
    net = Net(cfg, mode, bugs, autocast_style)
    train = bugs.trainable

    def fresh():
        P = {k: torch.tensor(v, dtype=torch.float64).to(pdt).requires_grad_(train(k)) for k, v in params.items()}
        TP = {k: torch.tensor(v, dtype=torch.float64).to(pdt) for k, v in teacher.items()}
        return P, TP

    I = {}
    for k, v in inputs.items():
        t = torch.tensor(np.asarray(v))
        I[k] = t.to(torch.int64) if k in ("labels", "mask", "step") else t.to(torch.float64).to(pdt)

    scale = 2.0 ** 16 if fp16 else 1.0
    while True:
        P, TP = fresh()
        acts = {}
        if ac_dt is not None:
            with torch.autocast("cpu", dtype=ac_dt):
                total, losses, (ncc, ncp) = net.objective(P, TP, I, acts)
        else:
            total, losses, (ncc, ncp) = net.objective(P, TP, I, acts)
        (total * scale).backward()
        grads = {k: v.grad for k, v in P.items() if v.grad is not None}
        if scale != 1.0:
            for g in grads.values():
                g.div_(scale)   # unscale (in the gradient's own dtype, as GradScaler does)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        if finite or scale <= 1.0 or not fp16:
            break
        scale /= 2   # GradScaler's backoff, retried on the same step instead of skipping it
    info = {"loss_scale": scale, "grads_finite": finite}
    hyper = dict(lr=bugs.value("lr", cfg.get("lr", 1e-4)),
                 betas=bugs.value("betas", (cfg.get("adam_beta1", 0.9), cfg.get("adam_beta2", 0.999))),
                 eps=bugs.value("adam-eps", cfg.get("adam_eps", 1e-8)),
                 weight_decay=bugs.value("weight-decay", cfg.get("weight_decay", 0.0)),
                 bias_correction="no-bias-correction" not in bugs)
    before = {k: v.detach().clone() for k, v in P.items()} if "ema-before-step" in bugs else None
    if finite and mode == "fp16-pure":
        # torch's AdamW in float16 adds eps = 1e-8, which is 0 in float16, and divides 0 by 0
        # wherever a gradient underflowed to exactly 0 (NaN parameters). Pure-fp16 training
        # does the update in float32: here from the unscaled float16 gradient, the moments
        # and the update in float32, the new parameter rounded back to float16.
        P32 = {k: v.detach().float().requires_grad_(train(k)) for k, v in P.items()}
        for k, v in P32.items():
            if k in grads:
                v.grad = grads[k].float()
        adamw_step([v for k, v in P32.items() if train(k)], **hyper)
        with torch.no_grad():
            for k, v in P.items():
                if train(k):
                    v.copy_(P32[k])
    elif finite:
        adamw_step([v for k, v in P.items() if train(k)], **hyper)
    beta = bugs.value("ema-beta", cfg["ema_beta"])
    src = before if before is not None else P
    with torch.no_grad():
        for k, t in TP.items():
            if "ema-reversed" in bugs:  # teacher <- (1 - beta) teacher + beta student
                t.mul_(1 - beta).add_(beta * src[k].detach())
            else:
                t.mul_(beta).add_((1 - beta) * src[k].detach())
    after = {"params": {k: sx.capture(v) for k, v in P.items()},
             "teacher": {k: sx.capture(v) for k, v in TP.items()},
             "center_cls": sx.capture(ncc), "center_patch": sx.capture(ncp)}
    losses = {k: sx.capture(v) for k, v in losses.items()}
    grads = {k: sx.capture(g) for k, g in grads.items()}
    return acts, losses, grads, after, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", required=True, help="exchange file with config, /params, /teacher, /inputs")
    ap.add_argument("--mode", required=True, choices=MODES)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bug", action="append", default=[], help="planted bug (repeatable); see the header")
    ap.add_argument("--autocast-style", choices=("cpu", "cuda"), default="cpu",
                    help="autocast modes: cpu = torch.autocast('cpu') as is; cuda = also run "
                         "layer_norm, softmax, log_softmax, L2 norms and loss arithmetic in float32")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    cfg, params, teacher, inputs = read_setup(a.setup)
    bugs = parse_bugs(a.bug, cfg, list(params))
    acts, losses, grads, after, info = run_step(cfg, params, teacher, inputs, a.mode, bugs,
                                                a.autocast_style, a.threads)
    out_cfg = dict(cfg)
    out_cfg["generator"] = ("tools/independent_step.py --mode " + a.mode
                            + (f" --autocast-style {a.autocast_style}" if a.mode.endswith("autocast") else "")
                            + "".join(f" --bug {b}" for b in a.bug))
    # frozen / weight-g-trained change /grads' key set on purpose, which check_file rejects:
    # then the file is checked here with those keys' lines (and only those) let through
    odd = {f"/grads/{k}:" for k in sx.grad_shapes(cfg).keys() ^ grads.keys()}
    sx.write_exchange(a.out, out_cfg, params, teacher=teacher, inputs=inputs, activations=acts,
                      losses=losses, grads=grads, after_step=after, precision_mode=a.mode, check=not odd)
    if odd:
        probs = [p for p in sx.check_file(a.out) if not any(p.startswith(o) for o in odd)]
        if probs:
            os.remove(a.out)
            raise sx.ExchangeError(f"{a.out}: " + "; ".join(probs))
    with h5py.File(a.out, "a") as f:
        f.attrs["planted_bugs"] = ",".join(a.bug) if a.bug else "none"
        f.attrs["loss_scale"] = info["loss_scale"]
    dts = sorted({str(v.dtype).replace("torch.", "") for v in acts.values()})
    print(f"wrote {a.out}: mode {a.mode}, bugs {a.bug or 'none'}, total loss {float(losses['total']):.6g}, "
          f"activation dtypes {dts}" + (f", loss scale {info['loss_scale']:g}" if a.mode.startswith("fp16") else "")
          + ("" if info["grads_finite"] else ", NON-FINITE GRADS: step skipped"))
    return 0


def run_plan(path):
    """--plan FILE: one set of this script's arguments per line (blank lines and # comments
    skipped), all run in this process (torch is imported once). Exit 1 if any failed."""
    import shlex
    bad = 0
    with open(path) as fh:
        lines = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    for ln in lines:
        try:
            main(shlex.split(ln))
        except (SystemExit, Exception) as e:  # noqa: BLE001 - report and go on
            if isinstance(e, SystemExit) and e.code in (0, None):
                continue
            bad += 1
            print(f"FAILED: {ln}: {e}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plan":
        sys.exit(run_plan(sys.argv[2]))
    sys.exit(main())
