#!/usr/bin/env python3
"""Tests of sddit_oracle's configs, conversion, writing and checking (numpy + h5py; the
torch ones skip without torch). Run by tools/tests/run.py."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import h5py
import numpy as np

from common import FIXTURE, ROOT, TOOLS as HERE, Skip, cli, raises, run  # noqa: F401
import sddit_oracle as sx  # noqa: E402
TINY = sx.preset("tiny")


def random_sd(cfg, part="student", seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in sx.param_shapes(cfg, part).items()}


def fixture_copy(tmp, name="broken.h5"):
    dst = os.path.join(tmp, name)
    shutil.copyfile(FIXTURE, dst)
    return dst


# ---- configs and shapes ---------------------------------------------------------------

def test_presets_have_every_spec_key():
    for name in ("tiny", "S/2", "B/2", "XL/2", "SD-DiT-XL/2", "xl/2"):
        cfg = sx.preset(name)
        assert sx.config_problems(cfg) == [], (name, sx.config_problems(cfg))
        for k in sx.REQUIRED_CONFIG_KEYS:
            assert k in cfg, (name, k)
    assert TINY["hidden_size"] == 32 and TINY["head_out_dim"] == 64 and TINY["num_classes"] == 10
    xl = sx.preset("XL/2")
    assert (xl["hidden_size"], xl["depth"], xl["num_heads"]) == (1152, 28, 16)
    assert (xl["decoder_hidden_size"], xl["decoder_depth"], xl["decoder_num_heads"]) == (512, 8, 16)
    assert (xl["head_hidden_dim"], xl["head_bottleneck_dim"], xl["head_out_dim"]) == (2048, 256, 8192)
    raises(sx.ExchangeError, sx.preset, "L/2")


def test_param_shapes_match_fixture_exactly():
    with h5py.File(FIXTURE, "r") as f:
        for group, part in (("params", "student"), ("teacher", "teacher")):
            have = {k: f[group][k].shape for k in f[group]}
            want = sx.param_shapes(TINY, part)
            assert set(have) == set(want), (group, set(have) ^ set(want))
            for k, s in want.items():
                assert have[k] == tuple(s), (group, k, have[k], s)


def test_param_shapes_match_every_fixture_config():
    # The fixtures' own configs (odd shapes too): /params and /teacher exactly as predicted.
    for name in sorted(os.listdir(os.path.join(ROOT, "fixtures"))):
        if not name.endswith(".h5"):
            continue
        path = os.path.join(ROOT, "fixtures", name)
        cfg = sx.load_config(path)
        with h5py.File(path, "r") as f:
            for group, part in (("params", "student"), ("teacher", "teacher")):
                if group in f:
                    have = {k: f[group][k].shape for k in f[group]}
                    assert have == {k: tuple(s) for k, s in sx.param_shapes(cfg, part).items()}, (name, group)


def test_teacher_is_student_minus_decoder():
    s, t = sx.param_shapes(TINY, "student"), sx.param_shapes(TINY, "teacher")
    assert set(t) < set(s)
    assert all(k.startswith(("decoder", "final_layer")) for k in set(s) - set(t))
    assert set(sx.grad_shapes(TINY)) == set(s) - set(sx.FIXED_KEYS)


def test_load_config_sources():
    with tempfile.TemporaryDirectory() as tmp:
        j = os.path.join(tmp, "c.json")
        with open(j, "w") as fh:
            json.dump(TINY, fh)
        assert sx.load_config(j) == TINY
        assert sx.load_config(json.dumps(TINY)) == TINY
        assert sx.load_config(FIXTURE)["hidden_size"] == 32
        bad = dict(TINY)
        del bad["tau_t"]
        with open(j, "w") as fh:
            json.dump(bad, fh)
        e = raises(sx.ExchangeError, sx.load_config, j)
        assert "tau_t" in str(e)


# ---- convert_state_dict ---------------------------------------------------------------

def test_convert_round_trip():
    sd = random_sd(TINY, seed=1)
    tsd = random_sd(TINY, "teacher", seed=2)
    params, teacher = sx.convert_state_dict(sd, TINY, teacher_state_dict=tsd)
    assert list(params) == list(sx.param_shapes(TINY, "student"))
    assert all(v.dtype == np.float64 for v in params.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.h5")
        sx.write_exchange(out, TINY, params, teacher=teacher)
        assert sx.check_file(out) == []
        with h5py.File(out, "r") as f:
            assert f.attrs["format"] == "sddit-oracle/1"
            assert json.loads(f.attrs["config"]) == TINY
            for k, v in sd.items():
                assert f["params"][k].dtype == np.float64
                assert np.array_equal(f["params"][k][()], v), k
            for k, v in tsd.items():
                assert np.array_equal(f["teacher"][k][()], v), k
        assert [n for n in os.listdir(tmp)] == ["run.h5"]  # no temporary left behind


def test_convert_prefixes_and_weight_norm_parametrization():
    sd = random_sd(TINY, seed=3, dtype=np.float32)
    wrapped = {}
    for i, (k, v) in enumerate(sd.items()):
        name = ("module." if i % 2 else "module._orig_mod.model.") + k
        name = name.replace("head.last_layer.weight_g", "head.last_layer.parametrizations.weight.original0")
        name = name.replace("head.last_layer.weight_v", "head.last_layer.parametrizations.weight.original1")
        wrapped[name] = v
    assert any("parametrizations.weight.original0" in k for k in wrapped)
    params = sx.convert_state_dict(wrapped, TINY)
    assert set(params) == set(sd)
    for k, v in sd.items():
        assert params[k].dtype == np.float64 and np.array_equal(params[k], v.astype(np.float64)), k


def test_convert_teacher_from_full_ema_drops_decoder():
    ema = random_sd(TINY, "student", seed=4)  # an EMA of the whole student (DiT-style)
    _, teacher = sx.convert_state_dict(random_sd(TINY), TINY, teacher_state_dict=ema)
    assert list(teacher) == list(sx.param_shapes(TINY, "teacher"))


def test_convert_missing_key():
    sd = random_sd(TINY)
    del sd["blocks.1.attn.qkv.bias"]
    e = raises(sx.StateDictError, sx.convert_state_dict, sd, TINY)
    assert e.missing == [("blocks.1.attn.qkv.bias", (96,))], e.missing
    assert "missing    blocks.1.attn.qkv.bias: expected shape [96]" in str(e), str(e)


def test_convert_wrong_shape():
    sd = random_sd(TINY)
    sd["head.last_layer.weight_g"] = np.ones(64)
    e = raises(sx.StateDictError, sx.convert_state_dict, sd, TINY)
    assert e.misshaped == [("head.last_layer.weight_g", (64, 1), (64,))], e.misshaped
    assert "expected shape [64, 1], found [64]" in str(e), str(e)
    assert e.missing == [] and e.unexpected == []


def test_convert_unexpected_key():
    sd = random_sd(TINY)
    sd["module.dino_loss.center"] = np.zeros((1, 64))
    e = raises(sx.StateDictError, sx.convert_state_dict, sd, TINY)
    assert e.unexpected == [("module.dino_loss.center (as dino_loss.center)", (1, 64))], e.unexpected
    assert "unexpected" in str(e) and "[1, 64]" in str(e)
    params = sx.convert_state_dict(sd, TINY, strict=False)  # dropped when not strict
    assert "dino_loss.center" not in params and len(params) == len(sx.param_shapes(TINY))


def test_convert_all_errors_in_one_message():
    sd = random_sd(TINY)
    del sd["cls_token"]
    sd["pos_embed"] = np.zeros((1, 16, 32))  # MaskDiT-style: no CLS row
    sd["extra.weight"] = np.zeros(3)
    e = raises(sx.StateDictError, sx.convert_state_dict, sd, TINY)
    msg = str(e)
    assert "1 missing, 1 unexpected, 1 misshaped" in msg, msg
    assert "cls_token" in msg and "extra.weight" in msg and "pos_embed" in msg
    assert "CLS row" in msg, msg


def test_convert_duplicate_after_prefix_strip():
    sd = random_sd(TINY)
    sd["module.cls_token"] = sd["cls_token"]
    e = raises(sx.ExchangeError, sx.convert_state_dict, sd, TINY)
    assert "cls_token" in str(e)


def test_convert_rename_head():
    sd = {k.replace("head.", "dino_head.", 1) if k.startswith("head.") else k: v
          for k, v in random_sd(TINY).items()}
    e = raises(sx.StateDictError, sx.convert_state_dict, sd, TINY)
    assert "rename" in str(e)
    params = sx.convert_state_dict(sd, TINY, rename={"dino_head.": "head."})
    assert "head.mlp.0.weight" in params


# ---- write_exchange -------------------------------------------------------------------

def full_run(seed=5, result_dtype=np.float64):
    rng = np.random.default_rng(seed)
    cfg = TINY
    N, C, H, K, T = 2, 4, 8, 64, 16
    mask = np.zeros((N, T), dtype=bool)
    for n in range(N):
        mask[n, rng.choice(T, 4, replace=False)] = True
    V = T - 4
    params = random_sd(cfg, seed=seed)
    inputs = {"x0": rng.standard_normal((N, C, H, H)), "labels": np.array([3, 10], dtype=np.int32),
              "sigma_s": np.exp(rng.standard_normal(N)), "noise_s": rng.standard_normal((N, C, H, H)),
              "noise_t": rng.standard_normal((N, C, H, H)), "mask": mask,
              "center_cls": np.zeros(K), "center_patch": np.zeros(K), "step": 0}
    acts = {n: rng.standard_normal(s).astype(result_dtype)
            for n, s in sx.activation_shapes(cfg, N, V).items()}
    losses = {"generative": 1.5, "dis_cls": 4.1, "dis_patch": 4.2, "total": 9.8}
    grads = {k: rng.standard_normal(s).astype(result_dtype) for k, s in sx.grad_shapes(cfg).items()}
    return cfg, params, inputs, acts, losses, grads


def test_write_full_run_types():
    cfg, params, inputs, acts, losses, grads = full_run()
    teacher = {k: params[k] for k in sx.param_shapes(cfg, "teacher")}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.h5")
        sx.write_exchange(out, cfg, params, teacher=teacher, inputs=inputs, activations=acts,
                          losses=losses, grads=grads)
        assert sx.check_file(out) == [], sx.check_file(out)
        with h5py.File(out, "r") as f:
            for k in ("labels", "mask", "step"):
                assert f["inputs"][k].dtype == np.int64, k
            assert f["inputs/step"].shape == ()
            assert list(f["inputs/labels"][()]) == [3, 10]
            assert f["inputs/x0"].dtype == np.float64
            assert f["losses/total"].shape == () and f["losses/total"][()] == 9.8
            assert f["activations/student.c"].dtype == np.float64
            assert len(f["grads"]) == len(sx.param_shapes(cfg)) - 3


def test_write_keeps_float32_results():
    cfg, params, inputs, acts, losses, grads = full_run(result_dtype=np.float32)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run32.h5")
        sx.write_exchange(out, cfg, params32, inputs=inputs, activations=acts, losses=losses, grads=grads)
        with h5py.File(out, "r") as f:
            assert f["params/cls_token"].dtype == np.float64  # parameters: widened, exact
            assert f["activations/student.F"].dtype == np.float32
            assert f["grads/cls_token"].dtype == np.float32
            assert f["losses/total"].dtype == np.float64  # Python floats
        sx.write_exchange(out, cfg, params32, losses=losses, precision="float32")
        with h5py.File(out, "r") as f:
            assert f["losses/total"].dtype == np.float32
            assert "activations" not in f


def test_write_refuses_bad_params_and_keeps_old_file():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.h5")
        good = random_sd(TINY)
        sx.write_exchange(out, TINY, good)
        before = open(out, "rb").read()
        bad = dict(good)
        del bad["final_layer.linear.bias"]
        e = raises(sx.ExchangeError, sx.write_exchange, out, TINY, bad)
        assert "final_layer.linear.bias" in str(e)
        bad_cfg = dict(TINY, hidden_size=30)
        raises(sx.ExchangeError, sx.write_exchange, out, bad_cfg, good)
        assert open(out, "rb").read() == before
        assert os.listdir(tmp) == ["run.h5"]


# ---- check ----------------------------------------------------------------------------

def test_check_fixture_passes():
    assert sx.check_file(FIXTURE) == [], sx.check_file(FIXTURE)
    rc, out = cli("check", FIXTURE)
    assert rc == 0 and out.strip().endswith(": ok"), (rc, out)


def test_check_every_fixture_passes():
    d = os.path.join(ROOT, "fixtures")
    for name in sorted(os.listdir(d)):
        if name.endswith(".h5"):
            probs = sx.check_file(os.path.join(d, name))
            assert probs == [], (name, probs)


def break_file(path, how):
    with h5py.File(path, "a") as f:
        if how == "format":
            f.attrs["format"] = "sddit-oracle/0"
        elif how == "config":
            cfg = json.loads(f.attrs["config"])
            del cfg["head_out_dim"]
            f.attrs["config"] = json.dumps(cfg)
        elif how == "missing_param":
            del f["params/blocks.0.mlp.fc1.weight"]
        elif how == "shape":
            del f["params/cls_token"]
            f["params/cls_token"] = np.zeros((1, 32))
        elif how == "unexpected":
            f["params/blocks.2.attn.qkv.bias"] = np.zeros(96)
        elif how == "grad_of_fixed":
            f["grads/pos_embed"] = np.zeros((1, 17, 32))
        elif how == "mask":
            m = f["inputs/mask"][()]
            m[0, :] = 0
            f["inputs/mask"][...] = m
        elif how == "labels_float":
            lab = f["inputs/labels"][()]
            del f["inputs/labels"]
            f["inputs/labels"] = lab.astype(np.float64)
        elif how == "activation_name":
            f["activations/student.enc.blocks.0"] = f["activations/student.enc.block.0"][()]
        elif how == "activation_shape":
            del f["activations/student.head.patch"]
            f["activations/student.head.patch"] = np.zeros((2, 16, 64))
        elif how == "nan":
            a = f["losses/total"]
            a[()] = np.nan
        elif how == "loss_shape":
            v = f["losses/generative"][()]
            del f["losses/generative"]
            f["losses/generative"] = np.array([v])


def test_check_broken_copies_fail():
    expect = {"format": "'format'", "config": "head_out_dim", "missing_param": "blocks.0.mlp.fc1.weight: missing",
              "shape": "cls_token: shape [1, 32], expected [1, 1, 32]",
              "unexpected": "blocks.2.attn.qkv.bias: unexpected", "grad_of_fixed": "fixed tensor",
              "mask": "different numbers of visible tokens", "labels_float": "/inputs/labels: dtype float64",
              "activation_name": "student.enc.blocks.0: not a SPEC activation name",
              "activation_shape": "student.head.patch: shape [2, 16, 64], expected [2, 12, 64]",
              "nan": "/losses/total: 1 non-finite", "loss_shape": "/losses/generative: shape [1]"}
    with tempfile.TemporaryDirectory() as tmp:
        for how, needle in expect.items():
            p = fixture_copy(tmp, f"broken_{how}.h5")
            break_file(p, how)
            probs = sx.check_file(p)
            assert probs and any(needle in x for x in probs), (how, probs)
            rc, out = cli("check", p)
            assert rc == 1 and needle in out, (how, rc, out)
        with open(os.path.join(tmp, "not.h5"), "w") as fh:
            fh.write("plain text")
        rc, out = cli("check", os.path.join(tmp, "not.h5"))
        assert rc == 1 and "cannot open" in out, out


# ---- CLI convert ----------------------------------------------------------------------

def test_cli_convert_npz_with_teacher():
    sd = random_sd(TINY, seed=7)
    tsd = random_sd(TINY, "student", seed=8)  # full-model EMA; decoder keys are dropped
    arrays = {"module." + k: v for k, v in sd.items()}
    arrays.update({"teacher/" + k: v for k, v in tsd.items()})
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = os.path.join(tmp, "ckpt.npz"), os.path.join(tmp, "run.h5")
        np.savez(npz, **arrays)
        rc, text = cli("convert", "--state-dict", npz, "--config", "tiny", "--teacher-key", "teacher",
                       "--out", out)
        assert rc == 0, text
        rc, text = cli("check", out)
        assert rc == 0, text
        with h5py.File(out, "r") as f:
            assert np.array_equal(f["params/blocks.1.mlp.fc2.weight"][()], sd["blocks.1.mlp.fc2.weight"])
            assert np.array_equal(f["teacher/head.mlp.4.bias"][()], tsd["head.mlp.4.bias"])
            assert "decoder_pos_embed" not in f["teacher"]


def test_cli_convert_teacher_from_student_and_ema_file():
    sd = random_sd(TINY, seed=9)
    with tempfile.TemporaryDirectory() as tmp:
        npz, ema, out = (os.path.join(tmp, n) for n in ("s.npz", "ema.npz", "run.h5"))
        np.savez(npz, **sd)
        rc, text = cli("convert", "--state-dict", npz, "--config", FIXTURE, "--teacher-from-student", "--out", out)
        assert rc == 0, text
        with h5py.File(out, "r") as f:
            assert np.array_equal(f["teacher/cls_token"][()], sd["cls_token"])
        tsd = random_sd(TINY, "teacher", seed=10)
        np.savez(ema, **tsd)
        rc, text = cli("convert", "--state-dict", npz, "--config", "tiny", "--ema", ema, "--out", out)
        assert rc == 0, text
        with h5py.File(out, "r") as f:
            assert np.array_equal(f["teacher/cls_token"][()], tsd["cls_token"])


def test_cli_convert_errors():
    sd = random_sd(TINY, seed=11)
    sd["blocks.0.attn.proj.weight"] = np.zeros((32, 31))
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = os.path.join(tmp, "bad.npz"), os.path.join(tmp, "run.h5")
        np.savez(npz, **sd)
        rc, text = cli("convert", "--state-dict", npz, "--config", "tiny", "--out", out)
        assert rc == 2 and "blocks.0.attn.proj.weight: expected shape [32, 32], found [32, 31]" in text, text
        assert not os.path.exists(out)
        rc, text = cli("convert", "--state-dict", npz, "--config", "L/2", "--out", out)
        assert rc == 2 and "unknown config" in text, text
        try:
            import torch  # noqa: F401
        except ImportError:
            pt = os.path.join(tmp, "ckpt.pt")
            open(pt, "wb").close()
            rc, text = cli("convert", "--state-dict", pt, "--config", "tiny", "--out", out)
            lines = text.strip().splitlines()
            assert rc == 2 and len(lines) == 1 and "needs torch" in lines[0], text


# ---- torch (run only where torch is importable) -----------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed")
    return torch


def tiny_torch_model(torch, cfg=TINY):
    """A module with the official DiT / MaskDiT / DINO names and a simplified forward."""
    nn = torch.nn
    D, C, p, Dd = cfg["hidden_size"], cfg["in_channels"], cfg["patch_size"], cfg["decoder_hidden_size"]
    T = (cfg["input_size"] // p) ** 2

    class Attn(nn.Module):
        def __init__(self, W):
            super().__init__()
            self.qkv, self.proj = nn.Linear(W, 3 * W), nn.Linear(W, W)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return self.proj(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)

    class Mlp(nn.Module):
        def __init__(self, W):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(W, 4 * W), nn.Linear(4 * W, W)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, W):
            super().__init__()
            self.attn, self.mlp = Attn(W), Mlp(W)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * W))

        def forward(self, x, c):
            s1, k1, g1, s2, k2, g2 = self.adaLN_modulation(c).unsqueeze(1).chunk(6, -1)
            ln = lambda h: torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)  # noqa: E731
            x = x + g1 * self.attn(ln(x) * (1 + k1) + s1)
            return x + g2 * self.mlp(ln(x) * (1 + k2) + s2)

    class Final(nn.Module):
        def __init__(self, W, out):
            super().__init__()
            self.linear = nn.Linear(W, out)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * W))

        def forward(self, x, c):
            s, k = self.adaLN_modulation(c).unsqueeze(1).chunk(2, -1)
            return self.linear(torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + k) + s)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            Hh, B, K = cfg["head_hidden_dim"], cfg["head_bottleneck_dim"], cfg["head_out_dim"]
            self.mlp = nn.Sequential(nn.Linear(D, Hh), nn.GELU(), nn.Linear(Hh, Hh), nn.GELU(), nn.Linear(Hh, B))
            self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(B, K, bias=False))

        def forward(self, x):
            return self.last_layer(torch.nn.functional.normalize(self.mlp(x), dim=-1))

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(C, D, p, p)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class TEmb(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))

    class YEmb(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding_table = nn.Embedding(cfg["num_classes"] + 1, D)

    class SDDiT(nn.Module):
        def __init__(self):
            super().__init__()
            self.x_embedder, self.t_embedder, self.y_embedder = Emb(), TEmb(), YEmb()
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + T, D), requires_grad=False)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
            self.blocks = nn.ModuleList(Block(D) for _ in range(cfg["depth"]))
            self.decoder_layer = Final(D, Dd)
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, T, Dd), requires_grad=False)
            self.decoder_blocks = nn.ModuleList(Block(Dd) for _ in range(cfg["decoder_depth"]))
            self.final_layer = Final(Dd, p * p * C)
            self.head = Head()

        def forward(self, x, c, keep):
            tok = self.x_embedder(x) + self.pos_embed[:, 1:]
            h = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(len(x), -1, -1),
                           tok[:, keep]], 1)
            for b in self.blocks:
                h = b(h, c)
            H = tok.clone()
            H[:, keep] = h[:, 1:]
            d = self.decoder_layer(H, c) + self.decoder_pos_embed
            for b in self.decoder_blocks:
                d = b(d, c)
            return self.final_layer(d, c), self.head(h)

    class Precond(nn.Module):  # EDM-style wrapper: keys get a "model." prefix
        def __init__(self):
            super().__init__()
            self.model = SDDiT()

        def forward(self, *a):
            return self.model(*a)

    return Precond()


def test_torch_state_dict_with_parametrized_weight_norm():
    torch = _torch()
    torch.manual_seed(0)
    net = tiny_torch_model(torch)
    sd = net.state_dict()
    assert "model.head.last_layer.parametrizations.weight.original0" in sd
    params = sx.convert_state_dict(sd, TINY)
    assert list(params) == list(sx.param_shapes(TINY))
    assert np.array_equal(params["head.last_layer.weight_v"],
                          sd["model.head.last_layer.parametrizations.weight.original1"].double().numpy())
    with tempfile.TemporaryDirectory() as tmp:
        pt, out = os.path.join(tmp, "ckpt.pt"), os.path.join(tmp, "run.h5")
        torch.save({"model": sd, "ema": sd, "epoch": 3}, pt)
        rc, text = cli("convert", "--state-dict", pt, "--config", "tiny", "--teacher-key", "ema", "--out", out)
        assert rc == 0, text
        assert sx.check_file(out) == []


def test_torch_hooks_record_spec_names():
    torch = _torch()
    torch.manual_seed(1)
    net = tiny_torch_model(torch)
    store = {}
    handles = sx.register_sddit_hooks(net, store)
    net.model.decoder_layer.register_forward_pre_hook(
        lambda mod, args: store.__setitem__("student.dec.in", sx.to_numpy(args[0])))
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 32)
    keep = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14])
    net(x, c, keep)
    assert sorted(store) == ["student.dec.block.0", "student.dec.block.1", "student.dec.in",
                             "student.enc.block.0", "student.enc.block.1"], sorted(store)
    assert store["student.enc.block.1"].shape == (2, 13, 32)
    assert store["student.enc.block.1"].dtype == torch.float32  # kept, not widened
    assert store["student.dec.block.0"].shape == (2, 16, 32)
    for h in handles:
        h.remove()
    store.clear()
    net(x, c, keep)
    assert list(store) == ["student.dec.in"]
    tstore = {}
    sx.register_sddit_hooks(net, tstore, prefix="teacher")
    net(x, c, torch.arange(16))
    assert sorted(tstore) == ["teacher.enc.block.0", "teacher.enc.block.1"]
    assert tstore["teacher.enc.block.0"].shape == (2, 17, 32)


def test_torch_tensors_in_write_exchange():
    torch = _torch()
    cfg, params, inputs, acts, losses, grads = full_run(result_dtype=np.float32)
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.h5")
        sx.write_exchange(out, cfg, {k: t(v).float() for k, v in params.items()},
                          inputs={k: t(v) for k, v in inputs.items()},
                          activations={k: t(v) for k, v in acts.items()},
                          losses={k: torch.tensor(v, dtype=torch.float32) for k, v in losses.items()},
                          grads={k: t(v).bfloat16() for k, v in grads.items()})
        assert sx.check_file(out) == []
        with h5py.File(out, "r") as f:
            assert f["params/cls_token"].dtype == np.float64
            assert f["inputs/mask"].dtype == np.int64
            assert f["losses/total"].dtype == np.float32
            assert f["grads/cls_token"].dtype == np.float32
            assert f["grads/cls_token"].attrs["dtype"] == "bfloat16"  # exact bfloat16 values, tagged



def test_torch_hooks_keep_dtype():
    # A float32 model's block outputs stay float32 (widening them to float64 made a correct
    # float32 run fail the float64 rule); bfloat16 stays bfloat16 up to the writer, which
    # stores it as exact float32 values tagged dtype = "bfloat16".
    torch = _torch()
    torch.manual_seed(2)
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 32)
    keep = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14])
    for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        net = tiny_torch_model(torch).to(dt)
        store = {}
        sx.register_sddit_hooks(net, store)
        with torch.no_grad():
            try:
                net(x.to(dt), c.to(dt), keep)
            except RuntimeError as e:  # an op without a CPU kernel in this dtype (old torch)
                if dt in (torch.float16, torch.bfloat16):
                    continue
                raise
        for name, t in store.items():
            assert t.dtype == dt and t.device.type == "cpu" and not t.requires_grad, (name, t.dtype, dt)
    net = tiny_torch_model(torch).to(torch.bfloat16)
    store = {}
    sx.register_sddit_hooks(net, store)
    with torch.no_grad():
        net(x.bfloat16(), c.bfloat16(), keep)
    cfg, params, inputs, acts, losses, grads = full_run()
    acts = {k: v for k, v in acts.items() if not k.startswith("student.enc.block.")}
    acts.update({k: v for k, v in store.items() if k.startswith("student.enc.block.")})
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bf16.h5")
        sx.write_exchange(out, cfg, params, inputs=inputs, activations=acts, precision_mode="bf16-pure")
        with h5py.File(out, "r") as f:
            d = f["activations/student.enc.block.1"]
            assert d.dtype == np.float32 and d.attrs["dtype"] == "bfloat16"
            assert np.array_equal(d[()], store["student.enc.block.1"].float().numpy())  # exact
            assert "dtype" not in f["activations/student.c"].attrs
        assert sx.check_file(out) == []


def test_write_keeps_each_result_dtype():
    cfg, params, inputs, acts, losses, grads = full_run()
    acts = dict(acts)
    acts["student.c"] = acts["student.c"].astype(np.float16)
    acts["student.F"] = acts["student.F"].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "mixed.h5")
        sx.write_exchange(out, cfg, params, inputs=inputs, activations=acts, grads=grads)
        assert sx.check_file(out) == [], sx.check_file(out)
        with h5py.File(out, "r") as f:
            assert f["activations/student.c"].dtype == np.float16
            assert f["activations/student.F"].dtype == np.float32
            assert f["activations/student.D"].dtype == np.float64
            assert f["params/cls_token"].dtype == np.float64


def test_bf16_attribute_checked():
    # numpy only: a float32 dataset tagged dtype = "bfloat16" must hold bfloat16 numbers.
    cfg, params, inputs, acts, losses, grads = full_run()
    bf = (acts["student.c"].astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tag.h5")
        sx.write_exchange(out, cfg, params, inputs=inputs, activations={"student.c": bf})
        with h5py.File(out, "a") as f:
            f["activations/student.c"].attrs["dtype"] = "bfloat16"
        assert sx.check_file(out) == []
        with h5py.File(out, "a") as f:
            d = f["activations/student.c"]
            d[0, 0] = np.float32(1.0) + np.float32(2.0 ** -20)
        probs = sx.check_file(out)
        assert any("not bfloat16 numbers" in p for p in probs), probs
        with h5py.File(out, "a") as f:
            f["activations/student.c"].attrs["dtype"] = "tf32"
        assert any("only one known" in p for p in sx.check_file(out))


def test_precision_mode_written_and_validated():
    cfg, params, inputs, acts, losses, grads = full_run(result_dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pm.h5")
        e = raises(sx.ExchangeError, sx.write_exchange, out, cfg, params, precision_mode="amp")
        assert "amp" in str(e) and all(m in str(e) for m in sx.PRECISION_MODES), str(e)
        assert not os.path.exists(out)
        sx.write_exchange(out, cfg, params, inputs=inputs, activations=acts, precision_mode="bf16-autocast")
        with h5py.File(out, "r") as f:
            assert f.attrs["precision_mode"] == "bf16-autocast"
        rc, text = cli("check", out)
        assert rc == 0 and text.strip().endswith(": ok (precision_mode bf16-autocast)"), (rc, text)
        sx.write_exchange(out, cfg, params)
        with h5py.File(out, "r") as f:
            assert "precision_mode" not in f.attrs
        with h5py.File(out, "a") as f:
            f.attrs["precision_mode"] = "mixed"
        probs = sx.check_file(out)
        assert any("precision_mode" in p and "'mixed'" in p and "bf16-pure" in p for p in probs), probs
        rc, text = cli("check", out)
        assert rc == 1 and "precision_mode" in text, text


def _after_step(cfg, params):
    K = int(cfg["head_out_dim"])
    return {"params": {k: v for k, v in params.items()},
            "teacher": {k: params[k] for k in sx.param_shapes(cfg, "teacher")},
            "center_cls": np.zeros(K), "center_patch": np.zeros(K)}


def test_missing_lr_is_reported():
    # The oracle reads lr, adam_*, weight_decay with SPEC defaults; a file recording an
    # after_step without them would be judged under 1e-4 / 0 whatever the run used.
    cfg, params, inputs, acts, losses, grads = full_run()
    assert "lr" not in cfg
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "nolr.h5")
        e = raises(sx.ExchangeError, sx.write_exchange, out, cfg, params, inputs=inputs,
                   grads=grads, after_step=_after_step(cfg, params))
        assert "'lr'" in str(e) and "0.0001" in str(e) and "weight_decay" in str(e), str(e)
        assert not os.path.exists(out)
        sx.write_exchange(out, cfg, params, inputs=inputs, grads=grads,
                          after_step=_after_step(cfg, params), check=False)
        probs = sx.check_file(out)
        assert any("'lr'" in p and "after_step" in p for p in probs), probs
        rc, text = cli("check", out)
        assert rc == 1 and "'lr' is missing" in text and "0.0001" in text and ": ok" not in text, text
        full = dict(cfg, lr=1e-2, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, weight_decay=0.0)
        sx.write_exchange(out, full, params, inputs=inputs, grads=grads, after_step=_after_step(cfg, params))
        rc, text = cli("check", out)
        assert rc == 0 and text.strip().endswith(": ok"), text
        # no after_step: lr is not used, nothing to say
        sx.write_exchange(out, cfg, params, inputs=inputs, grads=grads)
        assert sx.check_file(out) == []


def test_missing_rho_warns():
    cfg = dict(TINY)
    rng = np.random.default_rng(3)
    params = random_sd(cfg, seed=3)
    smp = {"x_init": rng.standard_normal((1, 4, 8, 8)), "labels": np.array([2]),
           "sigmas": np.array([80.0, 1.0, 0.0]), "x.0": np.zeros((1, 4, 8, 8)),
           "x.1": np.zeros((1, 4, 8, 8)), "out": np.zeros((1, 4, 8, 8))}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "smp.h5")
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            sx.write_exchange(out, cfg, params, sampler=smp)
        assert any("'rho'" in str(x.message) for x in w), [str(x.message) for x in w]
        notes = []
        assert sx.check_file(out, warnings=notes) == [] and any("rho" in n and "7.0" in n for n in notes), notes
        rc, text = cli("check", out)
        assert rc == 0 and "warning:" in text and not text.strip().endswith(": ok"), text
        rc, text = cli("check", "--strict", out)
        assert rc == 1, text



# ---- tools/independent_step.py (torch) ------------------------------------------------

def test_independent_step_float64_matches_fixtures():
    # The independent step in float64 against the fixtures (built from the official modules).
    _torch()
    import independent_step as st
    for name in ("public_train_tiny.h5", "public_odd_shapes.h5"):
        path = os.path.join(ROOT, "fixtures", name)
        cfg, P, T, I = st.read_setup(path)
        acts, losses, grads, after, _ = st.run_step(cfg, P, T, I, "float64")
        with h5py.File(path, "r") as f:
            for g, mine, tol in (("activations", acts, 1e-12), ("losses", losses, 1e-12),
                                 ("grads", grads, 1e-12), ("after_step/teacher", after["teacher"], 1e-10)):
                for k in f[g]:
                    r, m = f[g][k][()], mine[k].numpy()
                    assert m.dtype == np.float64 and m.shape == r.shape, (name, g, k)
                    assert np.abs(m - r).max() <= tol * max(np.abs(r).max(), 1e-300), (name, g, k)
            # after-step parameters in units of lr (the key-bias gradient is rounding noise)
            for k in f["after_step/params"]:
                d = np.abs(after["params"][k].numpy() - f["after_step/params"][k][()]).max()
                assert d <= 1e-6 * cfg["lr"], (name, k, d)
            for k in ("center_cls", "center_patch"):
                assert np.abs(after[k].numpy() - f["after_step"][k][()]).max() <= 1e-15, (name, k)


def test_independent_step_tf32_rounding():
    torch = _torch()
    import independent_step as st
    u = 2.0 ** -10
    x = torch.tensor([1 + u / 2, 1 + 1.5 * u, 1 + u / 2 + 2 ** -20, -(1 + 1.5 * u), float("inf"), 0.0])
    assert st.round_tf32(x).tolist() == [1.0, 1 + 2 * u, 1 + u, -(1 + 2 * u), float("inf"), 0.0]
    y = torch.randn(10000) * 100
    m, e = np.frexp(y.double().numpy())
    assert np.array_equal(st.round_tf32(y).double().numpy(), np.ldexp(np.round(m * 2 ** 11) / 2 ** 11, e))


def test_independent_step_writes_modes_and_bugs():
    _torch()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bf16.h5")
        p = subprocess.run([sys.executable, os.path.join(HERE, "independent_step.py"), "--setup", FIXTURE,
                            "--mode", "bf16-autocast", "--bug", "gelu-exact:1", "--out", out],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert sx.check_file(out) == []
        with h5py.File(out, "r") as f:
            assert f.attrs["precision_mode"] == "bf16-autocast" and f.attrs["planted_bugs"] == "gelu-exact:1"
            assert f["activations/student.head.cls"].attrs.get("dtype") == "bfloat16"
            assert f["grads/cls_token"].dtype == np.float32 and "dtype" not in f["grads/cls_token"].attrs
            with h5py.File(FIXTURE, "r") as g:  # the setup is copied unchanged
                assert np.array_equal(f["params/blocks.0.attn.qkv.weight"][()], g["params/blocks.0.attn.qkv.weight"][()])
                assert np.array_equal(f["inputs/mask"][()], g["inputs/mask"][()])
        p = subprocess.run([sys.executable, os.path.join(HERE, "independent_step.py"), "--setup", FIXTURE,
                            "--mode", "float32", "--bug", "gelu-exact:7", "--out", out],
                           capture_output=True, text=True)
        assert p.returncode != 0 and "BLOCK < depth" in p.stdout + p.stderr, p.stdout + p.stderr


if __name__ == "__main__":
    sys.exit(run([sys.modules[__name__]]))
