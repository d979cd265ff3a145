"""Recorder and loader on a real PyTorch SD-DiT (tests/sddit_torch.py, plain nn.Modules),
and the README's quickstart run verbatim; skipped where torch is not installed."""

import os
import re
import sys
import tempfile

import numpy as np

from common import ROOT, Skip, oracle_or_skip, raises, run, torch_or_skip
import sddit_oracle as so


def setup(bug=None, seed=0):
    torch_or_skip()
    import sddit_torch as st
    cfg = so.preset("tiny")
    student, teacher, opt = st.make(cfg, seed=seed)
    if bug == "ln-eps":   # LayerNorm eps 1e-5 in encoder block 1 (student and teacher)
        for m in (student, teacher):
            m.model.blocks[1].norm1.eps = 1e-5
    x0, labels, sigma, noise_s, noise_t, mask, center_cls, center_patch = st.inputs(cfg, seed=seed + 1)

    def train_step(x0, labels, sigma, noise_s, noise_t, mask, center_cls, center_patch):
        return st.train_step(student, teacher, opt, cfg, x0, labels, sigma, noise_s, noise_t, mask,
                             center_cls, center_patch)
    return dict(student=student, teacher=teacher, opt=opt, cfg="tiny", x0=x0, labels=labels, sigma=sigma,
                noise_s=noise_s, noise_t=noise_t, mask=mask, center_cls=center_cls, center_patch=center_patch,
                train_step=train_step)


def quickstart():
    """The first ```python block of README.md's section "Comparing your model"."""
    text = open(os.path.join(ROOT, "README.md")).read()
    sec = text[text.index("## Comparing your model"):]
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10, "the quickstart is longer than ten lines"
    return code


def record(ns, path):
    rec = so.Recorder(ns["student"], ns["teacher"], ns["cfg"], optimizer=ns["opt"])
    with rec.step(x0=ns["x0"], labels=ns["labels"], sigma=ns["sigma"], noise_s=ns["noise_s"], noise_t=ns["noise_t"],
                  mask=ns["mask"], centers=(ns["center_cls"], ns["center_patch"])):
        losses, centers = ns["train_step"](ns["x0"], ns["labels"], ns["sigma"], ns["noise_s"], ns["noise_t"],
                                           ns["mask"], ns["center_cls"], ns["center_patch"])
        rec.losses(losses, centers=centers)
    rec.write(path)
    return rec


def test_recorder_writes_every_group_in_float32():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.h5")
        record(setup(), out)
        assert so.check_file(out) == []
        ex = so.load_exchange(out, tensors="numpy")
        cfg = ex.config
        assert ex.precision_mode == "float32" and ex.writer == f"sddit_oracle {so.__version__}"
        assert cfg["lr"] == 1e-3 and cfg["weight_decay"] == 0.0 and cfg["mask_ratio"] == 0.25
        assert set(ex.activations) == set(so.activation_names(cfg))
        assert all(v.dtype == np.float32 for g in (ex.activations, ex.losses, ex.grads) for v in g.values())
        assert set(ex.grads) == set(so.grad_shapes(cfg))
        assert set(ex.after_step) == {"params", "teacher", "center_cls", "center_patch"}
        assert ex.student["cls_token"].dtype == np.float64   # the state_dict as float64 (of float32 values)
        assert not np.array_equal(ex.after_step["params"]["cls_token"], ex.student["cls_token"].astype(np.float32))


def test_recorder_refuses_an_incomplete_step():
    torch = torch_or_skip()
    ns = setup()
    with tempfile.TemporaryDirectory() as tmp:
        rec = so.Recorder(ns["student"], ns["teacher"], ns["cfg"], optimizer=ns["opt"])
        with rec.step(x0=ns["x0"], labels=ns["labels"], sigma=ns["sigma"], noise_s=ns["noise_s"],
                      noise_t=ns["noise_t"], mask=ns["mask"], centers=(ns["center_cls"], ns["center_patch"])):
            rec.losses({"generative": torch.tensor(1.0), "dis_cls": 0.5, "dis_patch": 0.5})
        e = raises(so.ExchangeError, rec.write, os.path.join(tmp, "r.h5"))
        assert "activations not recorded" in str(e) and not os.path.exists(os.path.join(tmp, "r.h5")), str(e)
        e = raises(so.ExchangeError, so.Recorder, ns["student"], ns["teacher"], dict(so.preset("tiny"), lr=1e-4),
                   optimizer=ns["opt"])
        assert "lr = 0.0001 but the optimizer uses 0.001" in str(e), str(e)
        e = raises(so.ExchangeError, so.Recorder, ns["student"], ns["teacher"], "tiny", modules={"blocs": "x"})
        assert "unknown roles" in str(e), str(e)


def test_loader_runs_the_model_on_the_oracle_dump():
    # the other direction: the oracle's step loaded into the torch model (float64), rerun,
    # recorded, and compared with the dump itself
    torch = torch_or_skip()
    import subprocess
    import sddit_torch as st
    binary = oracle_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        setup_h5, out = os.path.join(tmp, "setup.h5"), os.path.join(tmp, "mine.h5")
        subprocess.run([binary, "dump", "--backend", "ref", "--config", "tiny", "--seed", "3", "--mask-ratio", "0.5", "--sample", "0",
                        "--out", setup_h5], check=True, capture_output=True)
        ex = so.load_exchange(setup_h5)
        cfg = ex.config
        student, teacher, opt = st.make(cfg, lr=cfg["lr"])
        student.double(), teacher.double()
        student.load_state_dict(ex.state_dict("student", like=student))
        teacher.load_state_dict(ex.state_dict("teacher", like=teacher), strict=False)
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg["lr"],
                                betas=(cfg["adam_beta1"], cfg["adam_beta2"]), eps=cfg["adam_eps"],
                                weight_decay=cfg["weight_decay"])
        I = ex.inputs
        rec = so.Recorder(student, teacher, cfg, optimizer=opt)
        args = (I["x0"], I["labels"], I["sigma_s"], I["noise_s"], I["noise_t"], I["mask"], I["center_cls"], I["center_patch"])
        with rec.step(*args[:6], centers=args[6:], step=int(I["step"])):
            losses, centers = st.train_step(student, teacher, opt, cfg, *args)
            rec.losses(losses, centers=centers)
        for k in so.LOSS_NAMES:
            assert abs(float(losses[k].detach()) - float(ex.losses[k])) <= 1e-12 * abs(float(ex.losses[k])), k
        rec.write(out)
        assert so.load_exchange(out).precision_mode == "float64"
        assert so.assert_conforms(out, against=setup_h5)["passed"]


def test_readme_quickstart_clean_passes_and_planted_bug_fails():
    code = quickstart()
    oracle_or_skip()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            ns = setup()
            exec(code, ns)
            assert os.path.exists("run.h5") and so.load_exchange("run.h5").precision_mode == "float32"
            ns = setup(bug="ln-eps")
            e = raises(AssertionError, exec, code, ns)
            assert "FAIL activations/student.enc.block.1" in str(e) and e.report["passed"] is False, str(e)
        finally:
            os.chdir(cwd)


def test_torch_tensors_round_trip_with_bfloat16():
    torch = torch_or_skip()
    from common import FIXTURE
    with tempfile.TemporaryDirectory() as tmp:
        ex = so.load_exchange(FIXTURE)
        assert isinstance(ex.student["cls_token"], torch.Tensor) and ex.student["cls_token"].dtype == torch.float64
        ex.activations["student.c"] = ex.activations["student.c"].to(torch.bfloat16)
        a = os.path.join(tmp, "a.h5")
        ex.write(a)
        back = so.load_exchange(a)
        assert back.activations["student.c"].dtype == torch.bfloat16
        assert torch.equal(back.activations["student.c"], ex.activations["student.c"])
        assert so.load_exchange(a, tensors="numpy").attrs["activations/student.c"]["dtype"] == "bfloat16"


if __name__ == "__main__":
    sys.exit(run([sys.modules[__name__]]))


def test_explain_names_independent_float64_bugs():
    # `oracle diff --explain` on float64 steps from tools/independent_step.py (PyTorch, written
    # from SPEC apart from the Swift code), through assert_conforms: each cause named in words
    torch_or_skip()
    import subprocess
    binary = oracle_or_skip()
    if "--explain" not in subprocess.run([binary, "diff", "--help"], capture_output=True, text=True).stdout:
        raise Skip("this oracle has no --explain")
    cases = {"none": None, "ln-eps:1": "LayerNorm eps 1e-5", "weight-decay:0.01": "AdamW weight decay 0.01",
             "tau-t:0.04": "teacher temperature tau_T 0.04", "ema-reversed": "EMA reversed",
             "gelu-exact:0,lr:1e-3": ("GELU exact", "AdamW lr 0.001")}
    with tempfile.TemporaryDirectory() as tmp:
        setup_h5 = os.path.join(tmp, "setup.h5")
        subprocess.run([binary, "dump", "--backend", "ref", "--config", "tiny", "--seed", "1", "--mask-ratio", "0.5", "--sample", "0",
                        "--out", setup_h5], check=True, capture_output=True)
        plan = os.path.join(tmp, "plan.txt")
        with open(plan, "w") as f:
            for i, bug in enumerate(cases):
                bugs = "" if bug == "none" else " ".join(f"--bug {b}" for b in bug.split(","))
                f.write(f"--setup {setup_h5} --mode float64 {bugs} --out {os.path.join(tmp, f'{i}.h5')}\n")
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "independent_step.py"), "--plan", plan], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        for i, (bug, words) in enumerate(cases.items()):
            path = os.path.join(tmp, f"{i}.h5")
            if words is None:
                assert so.assert_conforms(path, oracle=binary)["passed"], bug
                continue
            e = raises(AssertionError, so.assert_conforms, path, oracle=binary)
            line = next((l for l in str(e).splitlines() if l.startswith("explained by: ")), "")
            for w in (words if isinstance(words, tuple) else (words,)):
                assert w in line, f"{bug}: {w!r} not in the explanation:\n{str(e)[-1500:]}"
