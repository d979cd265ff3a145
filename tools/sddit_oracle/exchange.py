"""Writing and reading exchange files: write_exchange (atomic, checked) and load_exchange."""

import json
import os
import tempfile
from collections.abc import Mapping

import numpy as np

from ._version import NAME, __version__
from .check import _attr_str, check_file
from .convert import _is_bfloat16, normalize_key, to_numpy
from .spec import FORMAT, INTEGER_PATHS, PRECISION_MODES, RESULT_GROUPS, ExchangeError, load_config, config_problems


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
    if precision == "keep" and a.dtype.kind == "f":
        return a, ({"dtype": "bfloat16"} if bf16 else {})
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
                   precision_mode=None, extra=None, attrs=None):
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
    `precision_mode` when given. precision="keep" stores every floating array in its own type
    (what load_exchange(...).write uses to rewrite a file as it was).

    The root attributes `writer` (sddit_oracle) and `writer_version` (its version) say what
    wrote the file. extra: {path: array} datasets outside SPEC's groups written as they are
    (the /train group of an `oracle train` checkpoint); attrs: {object path ("/" for the
    root): {name: value}} attributes set on the written objects.

    With check=True the written file is validated (check_file) before it replaces `path`;
    any problem raises ExchangeError and leaves `path` untouched; the check's warnings (e.g. a
    config key the oracle would fill in with a default) are issued with warnings.warn.
    after_step without the AdamW keys (lr, adam_beta1, adam_beta2, adam_eps, weight_decay) in
    cfg is an error: the oracle would judge the step under SPEC's defaults."""
    import h5py
    if precision not in ("auto", "float32", "float64", "keep"):
        raise ValueError(f"precision must be auto, float32, float64 or keep, found {precision!r}")
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
            f.attrs["writer"] = NAME
            f.attrs["writer_version"] = __version__
            if precision_mode is not None:
                f.attrs["precision_mode"] = precision_mode
            for g in tree:
                if tree[g] is not None:
                    f.require_group(g)
            for p, v in flat.items():
                a, tags = _dataset_array(p, v, precision)
                d = f.create_dataset(p, data=a)
                for k, val in tags.items():
                    d.attrs[k] = val
            for p, v in (extra or {}).items():
                f.create_dataset(p, data=to_numpy(v))
            for p, kv in (attrs or {}).items():
                obj = f if p in ("", "/") else f.require_group(p) if p not in f else f[p]
                for k, val in kv.items():
                    obj.attrs[k] = val
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
# Reading
# ---------------------------------------------------------------------------------------

SPEC_GROUPS = ("params", "teacher", "inputs", "activations", "losses", "grads", "after_step", "sampler")
# Root attributes that load_exchange reads into fields (the rest go to Exchange.attrs["/"]).
_ROOT_FIELDS = ("format", "config", "precision_mode", "writer", "writer_version")


def _torch_or_none(tensors):
    if tensors not in ("auto", "torch", "numpy"):
        raise ValueError(f"tensors must be auto, torch or numpy, found {tensors!r}")
    if tensors == "numpy":
        return None
    try:
        import torch
        return torch
    except ImportError:
        if tensors == "torch":
            raise ExchangeError("load_exchange(tensors='torch') needs torch (pip install torch)")
        return None


class Exchange:
    """An exchange file's contents (load_exchange). Groups are dicts under SPEC's names:

    config (dict), precision_mode (str or None), writer ("name version" or None),
    student and teacher (state_dicts under PyTorch's keys: /params and /teacher),
    inputs, activations, losses, grads, sampler ({name: tensor}), after_step ({"params":
    {...}, "teacher": {...}, "center_cls": .., "center_patch": ..}), extra ({path: tensor}:
    datasets outside SPEC's groups, e.g. an `oracle train` checkpoint's /train), attrs
    ({object path: {name: value}}, "/" for the root: attributes other than format, config,
    precision_mode and the writer's). Tensors are torch tensors when torch is importable
    (bfloat16 datasets as torch.bfloat16), numpy arrays otherwise; every one keeps its
    stored type."""

    def __init__(self, path):
        self.path = path
        self.config, self.precision_mode, self.writer = {}, None, None
        self.student, self.teacher, self.inputs, self.activations = {}, {}, {}, {}
        self.losses, self.grads, self.after_step, self.sampler = {}, {}, {}, {}
        self.extra, self.attrs = {}, {}
        self.groups = ()  # SPEC groups the file has

    def state_dict(self, part="student", like=None, rename=None):
        """The student's or the teacher's state_dict under SPEC's (PyTorch's) keys; with
        like=your_module, under that module's own keys (wrapper prefixes such as `model.`,
        weight_norm's `parametrizations.weight.original0/1`), so that
        `module.load_state_dict(ex.state_dict("student", like=module))` loads it. A teacher
        module holding more than SPEC's teacher (a copy of the whole student) needs
        strict=False."""
        sd = self.student if part == "student" else self.teacher
        if like is None:
            return dict(sd)
        target = like.state_dict() if hasattr(like, "state_dict") else like
        out = {k: sd[normalize_key(k, rename)] for k in target if normalize_key(k, rename) in sd}
        missing = sorted(set(sd) - {normalize_key(k, rename) for k in target})
        if missing:
            raise ExchangeError(f"{part}: the module has no key for {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                                + "; map key prefixes with rename={'your prefix.': 'SPEC prefix.'}")
        return out

    def _tree(self):
        return {"params": self.student, "teacher": self.teacher, "inputs": self.inputs,
                "activations": self.activations, "losses": self.losses, "grads": self.grads,
                "after_step": self.after_step, "sampler": self.sampler}

    def write(self, path, check=True):
        """Writes these contents to `path` (atomically), every dataset in its type."""
        tree = {g: (t if g in self.groups else None) for g, t in self._tree().items()}
        write_exchange(path, self.config, tree.pop("params"), precision="keep", check=check,
                       precision_mode=self.precision_mode, extra=self.extra, attrs=self.attrs, **tree)

    def __repr__(self):
        n = {g: len(t) for g, t in self._tree().items() if t}
        return f"Exchange({self.path!r}, {n})"


def load_exchange(path, tensors="auto"):
    """Reads an exchange file (SPEC section 7; also `oracle dump`, `oracle sample` and
    `oracle train` files) into an Exchange: config, student and teacher state_dicts under
    PyTorch's keys, inputs and every recorded result.

    tensors="auto" gives torch tensors when torch is importable and numpy arrays otherwise;
    "torch" or "numpy" ask for one. Each keeps its stored dtype (a dataset tagged
    dtype = "bfloat16" becomes torch.bfloat16; under numpy it stays float32 and keeps the tag
    in attrs). A file that is not an exchange file raises ExchangeError with one line."""
    import h5py
    torch = _torch_or_none(tensors)
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ExchangeError(f"{path}: cannot open as HDF5 ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    ex = Exchange(path)
    with f:
        fmt = _attr_str(f.attrs.get("format"))
        if fmt != FORMAT:
            raise ExchangeError(f"{path}: root attribute 'format' is {fmt!r}, expected {FORMAT!r}; "
                                "not an sddit-oracle exchange file")
        try:
            ex.config = json.loads(_attr_str(f.attrs.get("config")) or "")
        except ValueError:
            raise ExchangeError(f"{path}: root attribute 'config' is missing or not JSON")
        ex.precision_mode = _attr_str(f.attrs.get("precision_mode"))
        w, wv = _attr_str(f.attrs.get("writer")), _attr_str(f.attrs.get("writer_version"))
        ex.writer = f"{w} {wv}" if w and wv else w
        root = {k: v for k, v in f.attrs.items() if k not in _ROOT_FIELDS}
        if root:
            ex.attrs["/"] = root
        ex.groups = tuple(g for g in SPEC_GROUPS if g in f and isinstance(f[g], h5py.Group))

        def value(d):
            a = d[()]
            tag = _attr_str(d.attrs.get("dtype"))
            if torch is None or np.asarray(a).dtype.kind not in "fiub":
                return a
            t = torch.from_numpy(np.array(a))
            return t.to(torch.bfloat16) if tag == "bfloat16" else t

        def visit(name, obj):
            if obj.attrs and not (isinstance(obj, h5py.Dataset) and set(obj.attrs) == {"dtype"} and torch is not None):
                ex.attrs[name] = dict(obj.attrs)
            if not isinstance(obj, h5py.Dataset):
                return
            top, _, rest = name.partition("/")
            if top not in ex.groups:
                ex.extra[name] = value(obj)
                return
            target = ex.student if top == "params" else getattr(ex, top)
            if top == "after_step" and "/" in rest:
                sub, _, rest = rest.partition("/")
                target = ex.after_step.setdefault(sub, {})
            target[rest] = value(obj)

        f.visititems(visit)
    return ex
