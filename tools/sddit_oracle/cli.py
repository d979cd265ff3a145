"""The command line: python -m sddit_oracle {convert,check,shapes} (also the console
script sddit-oracle and the compatibility script tools/sddit_h5.py)."""

import argparse
import json
import sys

from .check import _attr_str, check_file
from .convert import convert_part, load_checkpoint, select_state_dict
from .exchange import write_exchange
from ._version import NAME, __version__
from .spec import PRECISION_MODES, ExchangeError, load_config, param_shapes


def _cmd_convert(a):
    cfg = load_config(a.config)
    rename = {}
    for r in a.rename or []:
        if "=" not in r:
            raise ExchangeError(f"--rename wants OLD=NEW, found '{r}'")
        old, new = r.split("=", 1)
        rename[old] = new
    ck = load_checkpoint(a.state_dict, a.trust_pickle)
    student_sd = select_state_dict(ck, a.student_key, "student")
    teacher_sd = None
    if a.ema:
        teacher_sd = select_state_dict(load_checkpoint(a.ema, a.trust_pickle), a.teacher_key, "teacher")
    elif a.teacher_key:
        teacher_sd = select_state_dict(ck, a.teacher_key, "teacher")
    params = convert_part(student_sd, cfg, "student", rename, not a.non_strict)
    teacher = None
    if teacher_sd is not None:
        teacher = convert_part(teacher_sd, cfg, "teacher", rename, not a.non_strict)
    elif a.teacher_from_student:
        teacher = {k: params[k].copy() for k in param_shapes(cfg, "teacher")}
    write_exchange(a.out, cfg, params, teacher=teacher)
    n = sum(v.size for v in params.values())
    print(f"wrote {a.out}: {len(params)} student tensors ({n:,} values)"
          + (f", {len(teacher)} teacher tensors" if teacher else ", no teacher"))
    return 0


def _precision_mode(path):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return _attr_str(f.attrs.get("precision_mode"))
    except OSError:
        return None


def _cmd_check(a):
    bad = 0
    for p in a.files:
        notes = []
        probs = check_file(p, warnings=notes)
        for line in probs:
            print(f"{p}: {line}")
        for line in notes:
            print(f"{p}: warning: {line}")
        pm = _precision_mode(p)
        mode = f" (precision_mode {pm})" if pm in PRECISION_MODES else ""
        if not probs:
            print(f"{p}: ok{mode}" if not notes else
                  f"{p}: ok as a layout, {len(notes)} warning{'s' if len(notes) > 1 else ''}{mode}")
        bad += bool(probs) or (a.strict and bool(notes))
    return 1 if bad else 0


def _cmd_shapes(a):
    cfg = load_config(a.config)
    for k, s in param_shapes(cfg, a.part).items():
        print(f"{k} {list(s)}")
    return 0


def main(argv=None, prog=None):
    ap = argparse.ArgumentParser(prog=prog or "sddit-oracle",
                                 description="Convert, check and describe sddit-oracle exchange files (SPEC section 7).")
    ap.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="a PyTorch state_dict (.pt or .npz) -> an exchange file with /params")
    c.add_argument("--state-dict", required=True, help="checkpoint: .pt/.pth/.bin (needs torch) or .npz")
    c.add_argument("--config", required=True, help="tiny, S/2, B/2, XL/2, a config .json, or an exchange .h5")
    c.add_argument("--out", required=True, help="exchange file to write")
    c.add_argument("--student-key", help="sub-dict holding the student (default: model/student/state_dict/net)")
    c.add_argument("--teacher-key", help="sub-dict holding the teacher (in --ema if given, else in --state-dict)")
    c.add_argument("--ema", help="a separate checkpoint holding the teacher (EMA) weights")
    c.add_argument("--teacher-from-student", action="store_true",
                   help="no teacher checkpoint: copy the student's encoder + head (SPEC: step 0)")
    c.add_argument("--rename", action="append", metavar="OLD=NEW",
                   help="rename a key prefix after stripping wrappers, e.g. dino_head.=head. (repeatable)")
    c.add_argument("--non-strict", action="store_true", help="drop unexpected keys instead of failing")
    c.add_argument("--trust-pickle", action="store_true", help="torch.load with weights_only=False")
    c.set_defaults(fn=_cmd_convert)
    k = sub.add_parser("check", help="validate exchange files; one line per problem, exit 1 if any")
    k.add_argument("files", nargs="+")
    k.add_argument("--strict", action="store_true", help="warnings count as problems (exit 1)")
    k.set_defaults(fn=_cmd_check)
    s = sub.add_parser("shapes", help="print the SPEC parameter keys and shapes of a config")
    s.add_argument("--config", required=True)
    s.add_argument("--part", choices=("student", "teacher"), default="student")
    s.set_defaults(fn=_cmd_shapes)
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (ExchangeError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
