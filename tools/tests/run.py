#!/usr/bin/env python3
"""Runs the package's tests without pytest: python3 tools/tests/run.py [MODULE ...]."""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run  # noqa: E402

NAMES = ("test_exchange", "test_package", "test_torch")

if __name__ == "__main__":
    sys.exit(run([importlib.import_module(n) for n in (sys.argv[1:] or NAMES)]))
