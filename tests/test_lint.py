"""The package, the tests and the generated modules are lint-clean: pyflakes and unused arguments (pyproject.toml
configures ruff). A generated kernel that computes something it never uses, or a parameter it never reads that is
not named _name, fails here."""

import subprocess
import sys

from helpers import ROOT


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "symbn", "tests", "generated"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
