"""Shared by the package's tests: paths, the CLI runner, Skip, and a runner without pytest.

    python3 tools/tests/run.py      # every test; "N passed, M failed, K skipped"; exit 1 on failure
    python3 -m pytest tools/tests   # the same tests under pytest, where it is installed
"""

import os
import subprocess
import sys
import traceback

TESTS = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(TESTS)
ROOT = os.path.dirname(TOOLS)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

FIXTURES = os.path.join(ROOT, "fixtures")
FIXTURE = os.path.join(FIXTURES, "public_train_tiny.h5")

try:
    import pytest
    Skip = pytest.skip.Exception
except ImportError:
    class Skip(Exception):
        pass


def torch_or_skip():
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed")
    return torch


def oracle_or_skip():
    """The oracle binary (find_oracle), or Skip where it is not built."""
    import sddit_oracle as so
    try:
        return so.find_oracle()
    except so.OracleError as e:
        raise Skip(str(e))


def raises(exc, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc as e:
        return e
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")


def cli(*args, script=None):
    """Runs `python -m sddit_oracle ARGS` (or a script): (exit status, stdout + stderr)."""
    cmd = [sys.executable, script, *args] if script else [sys.executable, "-m", "sddit_oracle", *args]
    env = dict(os.environ, PYTHONPATH=TOOLS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return p.returncode, p.stdout + p.stderr


def run(modules):
    """Runs every test_* function of `modules` in file order; prints one line each."""
    passed = failed = skipped = 0
    for mod in modules:
        tests = sorted(((n, f) for n, f in vars(mod).items() if n.startswith("test_") and callable(f)),
                       key=lambda nf: nf[1].__code__.co_firstlineno)
        for name, fn in tests:
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Skip as e:
                skipped += 1
                print(f"skip {name}: {e}")
            except Exception:  # noqa: BLE001
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc(file=sys.stdout)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0
