"""pytest integration: assert_conforms runs `oracle diff --json` on a file and turns a FAIL
into an AssertionError naming the tensors, with the JSON report attached."""

import json
import os
import shutil
import subprocess

from .spec import ExchangeError


class OracleError(RuntimeError):
    """The oracle binary is missing, too old, or could not judge the file (bad input)."""


def _repo_builds():
    """`.build/release/oracle` of the Swift package above the working directory or this file."""
    seen = set()
    for start in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        d = start
        while d not in seen:
            seen.add(d)
            if os.path.isfile(os.path.join(d, "Package.swift")):
                yield os.path.join(d, ".build", "release", "oracle")
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent


def find_oracle(oracle=None):
    """The oracle executable: `oracle` if given, else $SDDIT_ORACLE, else `oracle` on PATH,
    else the release build of the repository holding the working directory (or this
    package). OracleError names the places looked at when none is there."""
    tried = []
    for label, cand in (("argument", oracle), ("$SDDIT_ORACLE", os.environ.get("SDDIT_ORACLE"))):
        if cand:
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
            raise OracleError(f"the oracle binary given by {label} ({cand}) is not an executable file")
    on_path = shutil.which("oracle")
    if on_path:
        return on_path
    tried.append("PATH")
    for cand in _repo_builds():
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
        tried.append(cand)
    raise OracleError("the oracle binary was not found (looked in $SDDIT_ORACLE, " + ", ".join(tried)
                      + "); build it with `swift build -c release` in the repository, "
                      "or set SDDIT_ORACLE=/path/to/oracle")


_HELP = {}


def _diff_options(binary):
    """The option names `oracle diff --help` lists (cached per binary)."""
    st = os.stat(binary)
    key = (os.path.realpath(binary), st.st_mtime_ns, st.st_size)
    if key not in _HELP:
        try:
            p = subprocess.run([binary, "diff", "--help"], capture_output=True, text=True, timeout=60)
        except OSError as e:
            raise OracleError(f"{binary}: cannot run ({e})")
        text = p.stdout + p.stderr
        if p.returncode != 0 or "--json" not in text:
            raise OracleError(f"{binary}: too old: `oracle diff --help` does not list --json "
                              "(rebuild it from the repository: swift build -c release)")
        _HELP[key] = text
    return _HELP[key]


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def fail_lines(report, limit=5):
    """`FAIL ...` lines for the failed tensors of an `oracle diff --json` report, in forward
    order (the first is where to look), at most `limit` (then a count of the rest)."""
    bad = [t for t in report.get("tensors", []) if not t.get("passed", True)]
    out = []
    for t in bad[:limit]:
        line = (f"FAIL {t.get('name')} {t.get('shape_a')}  {t.get('precision_a')} vs {t.get('precision_b')}  "
                f"{t.get('bad')} / {t.get('count')} bad; max abs {_fmt(t.get('max_abs'))} at {t.get('max_abs_index')}"
                f", max rel {_fmt(t.get('max_rel'))}")
        cal = t.get("calibration") or {}
        if cal.get("failed"):
            line += (f"; error x{_fmt(cal.get('ratio'))} the {cal.get('precision')} level "
                     f"{_fmt(cal.get('level'))} (limit x{_fmt(cal.get('limit'))})")
        out.append(line)
    if len(bad) > limit:
        out.append(f"... and {len(bad) - limit} more failed tensors")
    for k, what in (("only_in_a", "only in the file"), ("only_in_b", "only on the oracle's side")):
        if report.get(k):
            out.append(f"{what}: {', '.join(map(str, report[k][:8]))}" + (" ..." if len(report[k]) > 8 else ""))
    if report.get("fixed_parameter_gradients"):
        out.append("gradients of fixed parameters: " + ", ".join(map(str, report["fixed_parameter_gradients"])))
    return out


def _explanation(report):
    """The report's explanation lines (`--explain`: what named the cause, the fitted values),
    as `oracle diff` prints them, then its diagnosis."""
    prefix = {"explained": "explained by: ", "fit": "fit: ", "not_explained": ""}
    lines = [prefix[e["kind"]] + e["text"] for e in report.get("explanations") or []
             if isinstance(e, dict) and e.get("kind") in prefix]
    return lines + [str(x) for x in report.get("diagnosis") or []]


def assert_conforms(path, against="ref", allow_missing=False, args=(), oracle=None, explain=True,
                    timeout=600):
    """Asserts that exchange file `path` passes `oracle diff --a path --b against`.

    against: a backend (ref, fast, fast-tf32, fast-bf16, ...) or another exchange file.
    allow_missing passes --allow-missing; args are further `oracle diff` options. The binary
    comes from find_oracle(oracle). `--explain` is passed when `oracle diff --help` lists it
    (and explain is true).

    Returns the JSON report (a dict) on a pass. On a mismatch raises AssertionError whose
    message has the first FAIL lines (tensor name, shape, types, worst element) and the
    oracle's explanation or diagnosis; the report is its attribute `report`. A missing or too
    old binary, or a file the oracle rejects (exit 2), raises OracleError with its message."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExchangeError(f"{path}: no such file")
    binary = find_oracle(oracle)
    cmd = [binary, "diff", "--a", path, "--b", os.fspath(against), "--json"]
    if allow_missing:
        cmd.append("--allow-missing")
    if explain and "--explain" in _diff_options(binary):
        cmd.append("--explain")
    elif not explain:
        _diff_options(binary)
    cmd += list(args)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OracleError(f"oracle diff on {path} took longer than {timeout} s")
    if p.returncode not in (0, 1):
        msg = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()
        raise OracleError(f"oracle diff could not judge {path} (exit {p.returncode}): {msg[0]}")
    try:
        report = json.loads(p.stdout)
    except ValueError:
        raise OracleError(f"oracle diff --json printed no JSON for {path}: {p.stdout[:200]!r}")
    if p.returncode == 0 and report.get("passed", True):
        return report
    head = (f"{path} does not conform to {against}: {report.get('failed', '?')} of "
            f"{report.get('compared', '?')} tensors failed")
    if report.get("mode"):
        head += f" (judged as {report['mode']})"
    err = AssertionError("\n".join([head] + fail_lines(report) + _explanation(report)))
    err.report = report
    raise err
