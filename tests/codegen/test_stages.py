"""Following a spec from symbn.load to the written file crosses each stage of the pipeline once, in order, and never
goes back into a stage it has left (the restructure's rule, checked on the calls symbn really makes).

A stage is entered when one of its modules' top-level functions is called from another module. Drivers (store.load,
module.module_text and its helpers) and libraries (symbols, printing, printers, escape, elementwise, describe,
version, and templating's reading of template files) are not stages; methods of a stage's products (a Graph's, a
Plan's), constructors, comprehensions, imports and calls from outside symbn (a dataclass being made) are not
entries."""

from __future__ import annotations

import sys

import pytest

import symbn
from symbn.codegen import store
from symbn.codegen.key import input_digest, module_name

STAGES = {
    "symbn.codegen.key": "key", "symbn.core.graph": "derive", "symbn.core.derive": "derive",
    "symbn.core.second": "derive", "symbn.codegen.plan": "plan", "symbn.codegen.lowering": "lowering",
    "symbn.codegen.reductions": "lowering", "symbn.codegen.shares": "lowering",
    "symbn.codegen.backends.numba": "backend", "symbn.codegen.backends.numpy": "backend",
    "symbn.codegen.stamp": "stamp",
}
ORDER = ["key", "derive", "plan", "lowering", "backend", "template", "stamp"]


def stages_entered(spec, backend) -> list[str]:
    entered: list[str] = []

    def profile(frame, event, _arg):
        if event != "call":
            return
        code, module = frame.f_code, frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if not (module.startswith("symbn") and caller.startswith("symbn")) or caller == module \
                or "." in code.co_qualname or code.co_name.startswith("<"):
            return
        stage = STAGES.get(module) or ("template" if module == "symbn.templating" and code.co_name == "render" else None)
        if stage and (not entered or entered[-1] != stage):
            entered.append(stage)

    sys.setprofile(profile)
    try:
        store.load(spec, backend)
    finally:
        sys.setprofile(None)
    return entered


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("spec", [symbn.preset("batch", "NCHW"), symbn.preset("layer", "NC")], ids=lambda s: s.name)
def test_load_crosses_each_stage_once_in_order(spec, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBN_CACHE", str(tmp_path))  # an empty cache: the module is generated
    # and not imported already by another test (symbn.load hands back a module this process has)
    monkeypatch.delitem(sys.modules, f"symbn_cache_{module_name(spec, backend)}_{input_digest(spec, backend)}",
                        raising=False)
    assert stages_entered(spec, backend) == ORDER
