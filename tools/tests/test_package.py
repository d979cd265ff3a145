"""Tests of sddit_oracle as a package (numpy + h5py): version and writer attributes,
load_exchange round trips of every fixture and of every kind of file the oracle writes,
assert_conforms (against the oracle, and against stand-in binaries), the command line's
bad input, the compatibility script, and `pip install ./tools`."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import h5py
import json
import numpy as np

from common import FIXTURE, FIXTURES, ROOT, TOOLS, cli, oracle_or_skip, raises, run, Skip
import sddit_oracle as so


def datasets(path):
    """{path: (array, attrs)} of every dataset, and {path: attrs} of every other object."""
    out, objs = {}, {}
    with h5py.File(path, "r") as f:
        objs["/"] = {k: (json.loads(v) if k == "config" else v) for k, v in f.attrs.items()
                     if k not in ("writer", "writer_version")}

        def visit(n, o):
            if isinstance(o, h5py.Dataset):
                out[n] = (o[()], dict(o.attrs))
            elif o.attrs:
                objs[n] = dict(o.attrs)
        f.visititems(visit)
    return out, objs


def assert_same_file(a, b):
    """Every dataset of `a` is in `b` with the same values, float type and attributes."""
    (da, oa), (db, ob) = datasets(a), datasets(b)
    assert set(da) == set(db), (a, sorted(set(da) ^ set(db))[:5])
    for k, (x, at) in da.items():
        y, bt = db[k]
        assert np.array_equal(x, y), (a, k)
        assert x.dtype == y.dtype or (x.dtype.kind in "iu" and y.dtype.kind in "iu"), (a, k, x.dtype, y.dtype)
        assert {n: str(v) for n, v in at.items()} == {n: str(v) for n, v in bt.items()}, (a, k, at, bt)
    assert {k: {n: str(v) for n, v in d.items()} for k, d in oa.items()} == \
        {k: {n: str(v) for n, v in d.items()} for k, d in ob.items()}, (a, oa, ob)


def round_trip(path, tmp, tensors="numpy"):
    ex = so.load_exchange(path, tensors=tensors)
    out = os.path.join(tmp, "rt-" + os.path.basename(path))
    ex.write(out)
    assert_same_file(path, out)
    return ex, out


def fixture_files():
    dirs = [FIXTURES, os.path.join(ROOT, "..", "shared", "fixtures")]
    return [os.path.join(d, n) for d in dirs if os.path.isdir(d) for n in sorted(os.listdir(d)) if n.endswith(".h5")]


def test_version_and_writer_attributes():
    text = open(os.path.join(TOOLS, "pyproject.toml")).read()
    assert 'version = {attr = "sddit_oracle._version.__version__"}' in text, "pyproject.toml does not take the package's version"
    assert so.__version__.count(".") == 2 and so.NAME == "sddit_oracle"
    with tempfile.TemporaryDirectory() as tmp:
        ex = so.load_exchange(FIXTURE, tensors="numpy")
        assert ex.writer is None
        out = os.path.join(tmp, "w.h5")
        ex.write(out)
        with h5py.File(out, "r") as f:
            assert f.attrs["writer"] == "sddit_oracle" and f.attrs["writer_version"] == so.__version__
        assert so.load_exchange(out).writer == f"sddit_oracle {so.__version__}"
        assert so.check_file(out) == []
    rc, text = cli("--version")
    assert rc == 0 and text.strip() == f"sddit_oracle {so.__version__}", text


def test_load_exchange_fields():
    ex = so.load_exchange(FIXTURE, tensors="numpy")
    cfg = so.preset("tiny")
    assert set(ex.student) == set(so.param_shapes(ex.config, "student"))
    assert set(ex.teacher) == set(so.param_shapes(ex.config, "teacher"))
    assert ex.config["hidden_size"] == cfg["hidden_size"] and "lr" in ex.config
    assert set(ex.inputs) >= {"x0", "labels", "sigma_s", "noise_s", "noise_t", "mask", "center_cls", "center_patch"}
    assert set(ex.losses) == set(so.LOSS_NAMES) and set(ex.activations) == set(so.activation_names(ex.config))
    assert set(ex.after_step) == {"params", "teacher", "center_cls", "center_patch"}
    assert isinstance(ex.student["cls_token"], np.ndarray) and ex.inputs["labels"].dtype.kind == "i"
    with h5py.File(FIXTURE, "r") as f:
        assert np.array_equal(ex.grads["blocks.1.mlp.fc2.weight"], f["grads/blocks.1.mlp.fc2.weight"][()])


def test_load_exchange_round_trips_every_fixture():
    files = fixture_files()
    assert len(files) >= 7, files
    with tempfile.TemporaryDirectory() as tmp:
        for p in files:
            round_trip(p, tmp)


def test_round_trip_detects_a_change():
    # the comparison above can fail: one changed value, one changed type
    with tempfile.TemporaryDirectory() as tmp:
        ex = so.load_exchange(FIXTURE, tensors="numpy")
        ex.activations["student.c"] = ex.activations["student.c"] + 1e-12
        out = os.path.join(tmp, "changed.h5")
        ex.write(out)
        raises(AssertionError, assert_same_file, FIXTURE, out)
        ex = so.load_exchange(FIXTURE, tensors="numpy")
        ex.losses["total"] = ex.losses["total"].astype(np.float32)
        ex.write(out)
        raises(AssertionError, assert_same_file, FIXTURE, out)


def oracle(*args):
    p = subprocess.run([oracle_or_skip(), *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_load_exchange_round_trips_oracle_files():
    oracle_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        j = lambda n: os.path.join(tmp, n)  # noqa: E731
        oracle("dump", "--backend", "ref", "--config", "tiny", "--seed", "2", "--sample", "2", "--out", j("ref.h5"))
        oracle("dump", "--backend", "fast", "--config", "tiny", "--seed", "2", "--sample", "2", "--out", j("fast.h5"))
        oracle("dump", "--backend", "fast-bf16", "--config", "tiny", "--seed", "2", "--out", j("bf16.h5"))
        oracle("train", "--config", "tiny", "--steps", "2", "--batch", "4", "--checkpoint", j("ckpt.h5"))
        for n in ("ref.h5", "fast.h5", "bf16.h5", "ckpt.h5"):
            ex, out = round_trip(j(n), tmp)
            assert so.check_file(out) == [], (n, so.check_file(out))
        assert so.load_exchange(j("ckpt.h5")).extra, "the checkpoint's /train group was not read"
        assert so.load_exchange(j("fast.h5"), tensors="numpy").sampler["out"].dtype == np.float32


def test_load_exchange_bad_input_is_one_line():
    with tempfile.TemporaryDirectory() as tmp:
        junk = os.path.join(tmp, "junk.h5")
        open(junk, "w").write("not hdf5")
        e = raises(so.ExchangeError, so.load_exchange, junk)
        assert "cannot open as HDF5" in str(e) and "\n" not in str(e), str(e)
        with h5py.File(os.path.join(tmp, "other.h5"), "w") as f:
            f["x"] = 1
        e = raises(so.ExchangeError, so.load_exchange, os.path.join(tmp, "other.h5"))
        assert "not an sddit-oracle exchange file" in str(e), str(e)
        raises(so.ExchangeError, so.load_exchange, os.path.join(tmp, "missing.h5"))


def test_cli_bad_input_one_line_no_traceback():
    with tempfile.TemporaryDirectory() as tmp:
        for args in (["convert", "--state-dict", os.path.join(tmp, "none.npz"), "--config", "tiny", "--out", os.path.join(tmp, "o.h5")],
                     ["shapes", "--config", "L/7"], ["shapes", "--config", os.path.join(tmp, "nope.json")]):
            rc, text = cli(*args)
            assert rc == 2 and len(text.strip().splitlines()) == 1 and "Traceback" not in text, (args, text)
        rc, text = cli("check", os.path.join(tmp, "none.h5"))
        assert rc == 1 and "cannot open as HDF5" in text and "Traceback" not in text, text


def test_compatibility_script():
    rc, a = cli("shapes", "--config", "tiny")
    rc2, b = cli("shapes", "--config", "tiny", script=os.path.join(TOOLS, "sddit_h5.py"))
    assert rc == rc2 == 0 and a == b and "pos_embed [1, 17, 32]" in a
    import sddit_h5
    assert sddit_h5.write_exchange is so.write_exchange and sddit_h5.FORMAT == so.FORMAT


def fake_oracle(tmp, help_text, json_text, rc=1):
    """A stand-in `oracle` that prints help_text for `diff --help` and json_text otherwise,
    and appends its arguments to args.txt."""
    path = os.path.join(tmp, "oracle")
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
echo "$@" >> {tmp}/args.txt
if [ "$2" = "--help" ]; then printf '%s\\n' '{help_text}'; exit 0; fi
printf '%s\\n' '{json_text}'; exit {rc}
""")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def test_assert_conforms_with_stand_in_binaries():
    report = ('{"passed": false, "compared": 3, "failed": 1, "mode": "float32", "diagnosis": ["a bug at X?"],'
              ' "explanations": [{"kind": "explained", "text": "block 1: LayerNorm eps"}, {"kind": "tried", "text": "GELU"}], "tensors": [{"name": "activations/student.c", "passed": true},'
              ' {"name": "grads/cls_token", "passed": false, "shape_a": [1, 1, 32], "bad": 3, "count": 32}]}')
    with tempfile.TemporaryDirectory() as tmp:
        run_h5 = os.path.join(tmp, "run.h5")
        shutil.copyfile(FIXTURE, run_h5)
        fake = fake_oracle(tmp, "  --json  --explain  --allow-missing", report)
        e = raises(AssertionError, so.assert_conforms, run_h5, oracle=fake)
        assert "FAIL grads/cls_token" in str(e) and "student.c" not in str(e), str(e)
        assert "explained by: block 1: LayerNorm eps" in str(e) and "a bug at X?" in str(e), str(e)
        assert "GELU" not in str(e), str(e)   # the tried divergences stay in the report
        assert e.report["failed"] == 1
        assert "--explain" in open(os.path.join(tmp, "args.txt")).read().splitlines()[-1]
        os.remove(os.path.join(tmp, "args.txt"))
        fake = fake_oracle(tmp, "  --json  --allow-missing", report.replace("false, \"compared", "true, \"compared"), rc=0)
        assert so.assert_conforms(run_h5, oracle=fake, allow_missing=True)["compared"] == 3
        last = open(os.path.join(tmp, "args.txt")).read().splitlines()[-1]
        assert "--explain" not in last and "--allow-missing" in last, last
        old = fake_oracle(tmp, "  --a  --b", report)
        e = raises(so.OracleError, so.assert_conforms, run_h5, oracle=old)
        assert "too old" in str(e), str(e)
        bad = fake_oracle(tmp, "  --json", "", rc=2)
        e = raises(so.OracleError, so.assert_conforms, run_h5, oracle=bad)
        assert "could not judge" in str(e), str(e)


def test_find_oracle_missing_is_clear():
    old = dict(os.environ)
    try:
        os.environ["SDDIT_ORACLE"] = "/nonexistent/oracle"
        e = raises(so.OracleError, so.find_oracle)
        assert "SDDIT_ORACLE" in str(e) and "/nonexistent/oracle" in str(e), str(e)
        del os.environ["SDDIT_ORACLE"]
        os.environ["PATH"] = "/nonexistent"
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                try:
                    found = so.find_oracle()
                    assert found.endswith(os.path.join(".build", "release", "oracle")), found  # the repository's build
                except so.OracleError as e:
                    assert "swift build -c release" in str(e) and "SDDIT_ORACLE" in str(e), str(e)
            finally:
                os.chdir(cwd)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_assert_conforms_against_the_oracle():
    oracle_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        ref, bad = os.path.join(tmp, "ref.h5"), os.path.join(tmp, "perturbed.h5")
        oracle("dump", "--backend", "ref", "--config", "tiny", "--seed", "4", "--out", ref)
        assert so.assert_conforms(ref, against="ref")["passed"] is True
        ex = so.load_exchange(ref, tensors="numpy")
        ex.activations["student.dec.block.0"][0, 0, 5] *= 1 + 1e-6
        ex.write(bad)
        e = raises(AssertionError, so.assert_conforms, bad, against="ref")
        assert "FAIL activations/student.dec.block.0" in str(e), str(e)
        assert e.report["passed"] is False and e.report["failed"] >= 1
        junk = os.path.join(tmp, "junk.h5")
        open(junk, "w").write("x")
        e = raises(so.OracleError, so.assert_conforms, junk)
        assert "could not judge" in str(e) and "\n" not in str(e), str(e)


def test_pip_install_in_a_venv():
    # `pip install ./tools` offline (setuptools from the system: --no-build-isolation) into a
    # venv that sees the system's numpy and h5py; the console script and python -m work.
    # The venv has no pip of its own: it uses the system's pip, setuptools and wheel.
    probe = subprocess.run([sys.executable, "-c", "import setuptools, importlib.util as u\n"
                            "assert u.find_spec('venv') and u.find_spec('pip')\n"
                            "assert u.find_spec('wheel') or u.find_spec('setuptools.command.bdist_wheel')"],
                           capture_output=True)
    if probe.returncode != 0:
        raise Skip("python3 lacks pip, setuptools or wheel (Debian: python3-pip)")
    with tempfile.TemporaryDirectory() as tmp:
        env = os.path.join(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", env],
                       check=True, capture_output=True)
        src = os.path.join(tmp, "tools")
        shutil.copytree(TOOLS, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        py = os.path.join(env, "bin", "python")
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the installed copy, not tools/
        p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", src],
                           capture_output=True, text=True, cwd=tmp, env=clean)
        assert p.returncode == 0, p.stdout + p.stderr
        p = subprocess.run([os.path.join(env, "bin", "sddit-oracle"), "--version"], capture_output=True, text=True,
                           cwd=tmp, env=clean)
        assert p.returncode == 0 and p.stdout.strip() == f"sddit_oracle {so.__version__}", p.stdout + p.stderr
        p = subprocess.run([py, "-c", "import sddit_oracle as s; print(s.__file__)"], capture_output=True, text=True,
                           cwd=tmp, env=clean)
        assert p.returncode == 0 and p.stdout.startswith(env), p.stdout + p.stderr


if __name__ == "__main__":
    sys.exit(run([sys.modules[__name__]]))
