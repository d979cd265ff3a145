#!/usr/bin/env python3
"""Compatibility shim: the tools now live in the package sddit_oracle (tools/sddit_oracle,
`pip install ./tools`). `import sddit_h5` (with tools/ on sys.path) gives the same names,
and `python tools/sddit_h5.py ...` runs its command line."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sddit_oracle import *  # noqa: E402,F401,F403
from sddit_oracle import __version__  # noqa: E402,F401
from sddit_oracle.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="sddit_h5.py"))
