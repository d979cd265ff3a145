"""Recorder: one PyTorch SD-DiT training step to an exchange file.

    rec = Recorder(student, teacher, cfg, optimizer=opt)
    with rec.step(x0=x0, labels=y, sigma=sigma, noise_s=n_s, noise_t=n_t, mask=mask,
                  centers=(center_cls, center_patch)):
        ...  # your step: forward, losses, backward, optimizer.step(), EMA, center update
        rec.losses(losses, centers=(new_center_cls, new_center_patch))
    rec.write("run.h5")

Activations come from forward hooks on modules named as in DiT / MaskDiT / DINO (`blocks`,
`decoder_blocks`, `decoder_layer`, `x_embedder`, `t_embedder`, `y_embedder`, `pos_embed`,
`head`), found in the model or in its `.module` / `._orig_mod` / `.model` / `.net`; other
names are given once with modules={role: "dotted.path"}. Everything keeps its dtype.
"""

import contextlib

from .convert import _student_only, capture, convert_part, normalize_key
from .exchange import write_exchange
from .hooks import _core
from .spec import (LOSS_NAMES, PRECISION_MODES, ExchangeError, activation_names, grad_shapes,
                   load_config, param_shapes)

# role -> default attribute of the module holding `blocks` (DiT / MaskDiT / DINO names).
ROLES = {"x_embedder": "x_embedder", "t_embedder": "t_embedder", "y_embedder": "y_embedder",
         "pos_embed": "pos_embed", "blocks": "blocks", "decoder_layer": "decoder_layer",
         "decoder_blocks": "decoder_blocks", "head": "head"}
# Which activations each role's hook gives (for the message when a role is not found).
_GIVES = {"x_embedder": "student.tokens", "pos_embed": "student.tokens", "t_embedder": "student.c",
          "y_embedder": "student.c", "decoder_layer": "student.dec.in", "head": "*.head.cls/patch"}
_ADAMW = {"lr": "lr", "adam_eps": "eps", "weight_decay": "weight_decay"}


def _get(root, path):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class _Part:
    """The hookable modules of a student or teacher."""

    def __init__(self, model, modules, what):
        self.model, self.core = model, (model if "blocks" in modules else _core(model))
        chain, m = [model], model
        while m is not self.core:
            m = next(getattr(m, a) for a in ("module", "_orig_mod", "model", "net") if hasattr(m, a))
            chain.append(m)
        # the module right above the core is the preconditioning wrapper (its output is D)
        self.precond = _get(model, modules["precond"]) if "precond" in modules else (
            chain[-2] if len(chain) > 1 else None)
        self.net = _get(model, modules["net"]) if "net" in modules else self.core
        self.mods, self.missing = {}, []
        for role, attr in ROLES.items():
            m = _get(model, modules[role]) if role in modules else getattr(self.core, attr, None)
            if m is None and role not in modules:
                m = getattr(model, attr, None)
            if m is None:
                self.missing.append(f"{what}: no `{modules.get(role, attr)}` for {_GIVES.get(role, role)}")
            self.mods[role] = m


class Recorder:
    """Records one training step of a PyTorch SD-DiT: see the module's docstring.

    student, teacher: the modules (DDP, torch.compile and EDM-style wrappers are looked
    through; a teacher that is an EMA copy of the whole student is fine). cfg: a preset name
    (tiny, S/2, B/2, XL/2), a dict with SPEC section 7's keys, or a .json / exchange file;
    the values your step uses (tau_t, ema_beta, ...). optimizer: your torch.optim.AdamW; its
    lr, betas, eps and weight_decay go into the config (a value cfg gives differently is an
    error). precision_mode: how the step computes (one of PRECISION_MODES), or "auto": from
    the parameters' dtype, autocast seen during the forward, and TF32 on CUDA. modules:
    {role: dotted path from the model} for modules not named as DiT does (roles: ROLES, plus
    "net" whose output is F and "precond" whose output is D). rename: {old prefix: new
    prefix} for state_dict keys (e.g. {"dino_head.": "head."})."""

    def __init__(self, student, teacher, cfg, optimizer=None, precision_mode="auto", modules=None,
                 rename=None):
        import torch
        self.torch = torch
        self.cfg = dict(load_config(cfg))
        if optimizer is not None:
            self._adamw_config(optimizer)
        if precision_mode != "auto" and precision_mode not in PRECISION_MODES:
            raise ExchangeError(f"precision_mode {precision_mode!r} is not one of: auto, {', '.join(PRECISION_MODES)}")
        self.precision_mode, self.rename = precision_mode, rename
        modules = dict(modules or {})
        unknown = set(modules) - set(ROLES) - {"net", "precond"}
        if unknown:
            raise ExchangeError(f"modules: unknown roles {sorted(unknown)}; known: {', '.join(ROLES)}, net, precond")
        self.student, self.teacher = _Part(student, modules, "student"), _Part(teacher, modules, "teacher")
        self._written, self._active = None, False
        self.results = None

    def _adamw_config(self, opt):
        if type(opt).__name__ != "AdamW":
            raise ExchangeError(f"optimizer: the oracle models torch.optim.AdamW, found {type(opt).__name__}")
        g = opt.param_groups[0]
        vals = {k: float(g[v]) for k, v in _ADAMW.items()}
        vals["adam_beta1"], vals["adam_beta2"] = (float(b) for b in g["betas"])
        for k, v in vals.items():
            if k in self.cfg and self.cfg[k] is not None and float(self.cfg[k]) != v:
                raise ExchangeError(f"config: {k} = {self.cfg[k]} but the optimizer uses {v}")
            self.cfg[k] = v

    # -- the step --------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, x0, labels, sigma, noise_s, noise_t, mask, centers, step=0):
        """Around your training step. x0, noise_s, noise_t [N,C,H,W] (unit noise), labels [N],
        sigma [N], mask [N,T] (1 = hidden; None: nothing hidden), centers (center_cls,
        center_patch) before the update. Inside, call rec.losses(...) once."""
        torch = self.torch
        T = (int(self.cfg["input_size"]) // int(self.cfg["patch_size"])) ** 2
        N = int(x0.shape[0])
        if mask is None:
            mask = torch.zeros(N, T, dtype=torch.int64)
        mask = capture(torch.as_tensor(mask)).to(torch.int64)
        if tuple(mask.shape) != (N, T):
            raise ExchangeError(f"mask: shape {list(mask.shape)}, expected [{N}, {T}]")
        self.cfg.setdefault("mask_ratio", float(mask[0].sum()) / T)
        self.inputs = {"x0": capture(x0), "labels": capture(torch.as_tensor(labels)), "sigma_s": capture(sigma),
                       "noise_s": capture(noise_s), "noise_t": capture(noise_t), "mask": mask,
                       "center_cls": capture(centers[0]), "center_patch": capture(centers[1]), "step": int(step)}
        self._centers_in = centers
        self.N, self.T, self.V = N, T, T - int(mask[0].sum())
        self.params = convert_part(self.student.model.state_dict(), self.cfg, "student", self.rename)
        self.teacher_params = convert_part(self.teacher.model.state_dict(), self.cfg, "teacher", self.rename)
        self.raw, self.heads, self.autocast = {}, {"student": [], "teacher": []}, set()
        self.manual, self.loss_values, self.centers_out = {}, None, None
        handles = self._hooks()
        self._active = True
        try:
            yield self
        finally:
            self._active = False
            for h in handles:
                h.remove()
        self._collect()

    def losses(self, losses, centers=None):
        """The step's losses: {generative, dis_cls, dis_patch[, total]} or a tuple in that
        order (tensors or floats; total defaults to their sum), and the centers after the
        update (center_cls, center_patch) unless the tensors given to step() were updated in
        place."""
        if isinstance(losses, dict):
            d = dict(losses)
        else:
            d = dict(zip(LOSS_NAMES, losses))
        miss = [k for k in LOSS_NAMES[:3] if k not in d]
        if miss:
            raise ExchangeError(f"losses: missing {', '.join(miss)} (expected {', '.join(LOSS_NAMES)})")
        if "total" not in d:
            d["total"] = d["generative"] + d["dis_cls"] + d["dis_patch"]
        self.loss_values = {k: capture(self.torch.as_tensor(d[k])) for k in LOSS_NAMES}
        if centers is not None:
            self.centers_out = (capture(centers[0]), capture(centers[1]))

    def record(self, name, tensor):
        """Records SPEC activation `name` by hand (where no hook sees it); dtype kept."""
        if name not in activation_names(self.cfg):
            raise ExchangeError(f"record: '{name}' is not a SPEC activation name")
        self.manual[name] = capture(tensor)

    # -- hooks -------------------------------------------------------------------------------

    def _hooks(self):
        torch, raw, H = self.torch, self.raw, []

        def put(name, pre=False):
            def hook(_m, args, out=None):
                self._note_autocast()
                raw[name] = capture(_first(args[0] if pre else out))
            return hook

        for who, part in (("student", self.student), ("teacher", self.teacher)):
            for i, b in enumerate(part.mods["blocks"] or []):
                H.append(b.register_forward_hook(put(f"{who}.enc.block.{i}")))
            if part.mods["head"] is not None:
                H.append(part.mods["head"].register_forward_hook(
                    lambda _m, _a, out, who=who: self.heads[who].append(capture(_first(out)))))
        s = self.student.mods
        for i, b in enumerate(s["decoder_blocks"] or []):
            H.append(b.register_forward_hook(put(f"student.dec.block.{i}")))
        if s["decoder_layer"] is not None:
            H.append(s["decoder_layer"].register_forward_pre_hook(put("student.dec.in", pre=True)))
        for role in ("x_embedder", "t_embedder", "y_embedder"):
            if s[role] is not None:
                H.append(s[role].register_forward_hook(put(role)))
        H.append(self.student.net.register_forward_hook(put("student.F")))
        if self.student.precond is not None:
            H.append(self.student.precond.register_forward_hook(put("student.D")))
        del torch
        return H

    def _note_autocast(self):
        torch = self.torch
        for dev in ("cpu", "cuda"):
            try:
                if torch.is_autocast_enabled(dev):
                    self.autocast.add(str(torch.get_autocast_dtype(dev)).replace("torch.", ""))
            except (TypeError, RuntimeError, AttributeError):
                pass

    # -- after the step ------------------------------------------------------------------------

    def _head(self, outs, who):
        """(cls [N,K], patch [N,V,K]) from the head's outputs, whatever it was called on."""
        torch, N, V, T = self.torch, self.N, self.V, self.T
        cls = patch = None
        for o in outs:
            if o.dim() == 2 and o.shape[0] == N:
                cls = o
            elif o.dim() == 2 and o.shape[0] in (N * V, N * T):
                patch = o.reshape(N, -1, o.shape[1])
            elif o.dim() == 3 and o.shape[1] in (1 + V, 1 + T):
                cls, patch = o[:, 0], o[:, 1:]
            elif o.dim() == 3:
                patch = o
        if patch is not None and patch.shape[1] == T and V != T:   # the teacher: all positions
            keep = torch.nonzero(self.inputs["mask"] == 0)[:, 1].reshape(N, V)
            patch = torch.gather(patch, 1, keep.unsqueeze(-1).expand(-1, -1, patch.shape[2]))
        out = {}
        if cls is not None:
            out[f"{who}.head.cls"] = cls.contiguous()
        if patch is not None:
            out[f"{who}.head.patch"] = patch.contiguous()
        return out

    def _collect(self):
        torch, raw, s = self.torch, dict(self.raw), self.student.mods
        acts = {k: v for k, v in raw.items() if "." in k and k != "student.D"}
        if "x_embedder" in raw and s["pos_embed"] is not None:
            pe = s["pos_embed"].detach().cpu()
            acts["student.tokens"] = raw["x_embedder"] + pe[:, pe.shape[1] - self.T:]
        if "t_embedder" in raw and "y_embedder" in raw:
            acts["student.c"] = raw["t_embedder"] + raw["y_embedder"]
        if "student.D" in raw:
            acts["student.D"] = raw["student.D"]
        elif "student.F" in raw:   # no wrapper: D = c_skip x_s + c_out F, in F's dtype
            F = raw["student.F"]
            sd = float(self.cfg["sigma_data"])
            s_ = self.inputs["sigma_s"].double().reshape(-1, 1, 1, 1)
            x = (self.inputs["x0"].double() + s_ * self.inputs["noise_s"].double()).to(F.dtype)
            c_skip, c_out = sd ** 2 / (s_ ** 2 + sd ** 2), s_ * sd / (s_ ** 2 + sd ** 2).sqrt()
            acts["student.D"] = c_skip.to(F.dtype) * x + c_out.to(F.dtype) * F
        for who in ("student", "teacher"):
            acts.update(self._head(self.heads[who], who))
        acts.update(self.manual)
        self.activations = acts
        grads = {}
        want = grad_shapes(self.cfg)
        for n, p in self.student.model.named_parameters():
            k = normalize_key(n, self.rename)
            if k in want and p.grad is not None:
                grads[k] = capture(p.grad)
        self.grads = grads
        self.after = {"params": self._state(self.student.model, "student"),
                      "teacher": self._state(self.teacher.model, "teacher")}
        c = self.centers_out
        if c is None and any(not torch.equal(capture(t), self.inputs[k])
                             for t, k in zip(self._centers_in, ("center_cls", "center_patch"))):
            c = tuple(capture(t) for t in self._centers_in)   # updated in place
        if c is not None:
            self.after["center_cls"], self.after["center_patch"] = c

    def _state(self, model, part):
        keys = param_shapes(self.cfg, part)
        out = {}
        for n, v in model.state_dict().items():
            k = normalize_key(n, self.rename)
            if k in keys:
                out[k] = capture(v)
            elif not (part == "teacher" and _student_only(k)):
                raise ExchangeError(f"{part}: state_dict key '{n}' is not a SPEC key")
        return out

    def _mode(self):
        if self.precision_mode != "auto":
            return self.precision_mode
        torch = self.torch
        p = next(t for t in self.student.model.parameters() if t.is_floating_point())
        if p.dtype == torch.float64:
            return "float64"
        if p.dtype in (torch.bfloat16, torch.float16):
            return ("bf16" if p.dtype == torch.bfloat16 else "fp16") + "-pure"
        if self.autocast:
            return ("bf16" if "bfloat16" in self.autocast else "fp16") + "-autocast"
        if p.is_cuda and torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        if p.is_cuda and torch.backends.cudnn.allow_tf32:
            return "tf32-conv"
        return "float32"

    def write(self, path):
        """Writes the recorded step to `path` (atomically; the file is checked first, and a
        problem raises ExchangeError leaving `path` untouched). Returns path."""
        if not hasattr(self, "activations"):
            raise ExchangeError("nothing recorded: write() comes after `with rec.step(...):`")
        if self.loss_values is None:
            raise ExchangeError("no losses: call rec.losses({...}) inside `with rec.step(...):`")
        missing = [n for n in activation_names(self.cfg) if n not in self.activations]
        if missing:
            why = self.student.missing + self.teacher.missing
            raise ExchangeError(f"activations not recorded: {', '.join(missing)}"
                                + (f" ({'; '.join(why)})" if why else "")
                                + "; name the modules with Recorder(modules={role: 'dotted.path'}) "
                                "or record them with rec.record(name, tensor)")
        after = self.after
        changed = any(not self.torch.equal(v.double(), self.torch.from_numpy(self.params[k]))
                      for k, v in after["params"].items())
        if not changed:
            raise ExchangeError("the student's parameters did not change: call optimizer.step() "
                                "inside `with rec.step(...):`")
        if float(self.cfg["ema_beta"]) < 1 and all(
                self.torch.equal(v.double(), self.torch.from_numpy(self.teacher_params[k]))
                for k, v in after["teacher"].items()):
            raise ExchangeError("the teacher did not change: apply the EMA update inside `with rec.step(...):`")
        if "center_cls" not in after:
            raise ExchangeError("the updated centers are unknown: rec.losses(losses, centers=(center_cls, center_patch))")
        write_exchange(path, self.cfg, self.params, teacher=self.teacher_params, inputs=self.inputs,
                       activations=self.activations, losses=self.loss_values, grads=self.grads,
                       after_step=after, precision_mode=self._mode())
        self._written = path
        return path
