"""The README keeps its promises: CI runs its test command verbatim, and the commands it shows work."""

import re

from helpers import ROOT


def readme_commands():
    block = re.search(r"## Two commands\n.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_two_commands_and_ci_runs_the_test_command_verbatim():
    main_job, tests = readme_commands()
    assert "symbn" in main_job and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_readme_python_example_matches_the_engine():
    import symbn

    readme = (ROOT / "README.md").read_text()
    d = symbn.derive(symbn.preset("batch", "NCHW"))
    assert f"dx = {d.dx}" in readme
    assert f"print(d.dx)              # {d.dx}" in readme


def test_readme_usage_example_runs_and_out_receives_the_results(monkeypatch):
    import numpy as np

    block = re.search(r"```python\n(import importlib\.util.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(ROOT)
    env = {}
    exec(compile(block, "README.md", "exec"), env)
    assert env["y"] is env["y_buf"] and env["dx"] is env["dx_buf"]
    fresh = env["bn"].backward(np.ones_like(env["x"]), env["x"], env["gamma"], env["mu"], env["istd"])[0]
    np.testing.assert_array_equal(env["dx"], fresh)
