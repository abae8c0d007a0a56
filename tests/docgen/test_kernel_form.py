"""Section 7's explanation of the Numba backward: the kernel's coefficients (k0, k1, ...) come from the code generator,
give back the compact dx exactly (checked with SymPy when a document is built), are what the quoted module prints,
and a wrong coefficient, a lost shift correction or a kernel other than the one explained stops the document."""

import dataclasses

import pytest
import sympy

from helpers import GENERATED
from symbn import preset
from symbn.codegen import catalogue as catalog
from symbn.codegen.elementwise import SHIFT, XS
from symbn.core.symbols import DY
from symbn.docgen import document as docs
from symbn.docgen import kernelform
from symbn.docgen.evidence import ModuleChecks, kernel_excerpt

EVERY_SPEC = catalog.preset_specs() + list(catalog.custom_specs().values()) + [
    preset("batch", "NCHW").with_options(center=False, scale=False), preset("layer", "NC").with_options(ddof=1),
    preset("batch", "NHWC").with_options(scale=False)]


def _form(name: str) -> kernelform.KernelForm:
    return kernelform.kernel_form(next(s for s in catalog.CATALOG if s.name == name))


def _numba_text(name: str) -> str:
    return kernel_excerpt((GENERATED / f"{name}_numba.py").read_text())[1]


def _with(form: kernelform.KernelForm, symbol: str, expr) -> kernelform.KernelForm:
    coefficients = tuple(dataclasses.replace(c, expr=expr(c.expr)) if c.symbol.name == symbol else c
                         for c in form.coefficients)
    return dataclasses.replace(form, coefficients=coefficients)


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
def test_coefficients_give_back_the_compact_dx(spec):
    form = kernelform.verify(kernelform.kernel_form(spec))
    assert form.stages and form.coefficients
    assert all(c.symbol.name.startswith("k") for c in form.coefficients)
    assert (form.mean is not None) == form.shifted


@pytest.mark.parametrize("spec", catalog.CATALOG, ids=lambda s: s.name)
def test_generated_module_prints_the_coefficients(spec):
    form = kernelform.kernel_form(spec)
    kernelform.check_module(form, _numba_text(spec.name), spec.name)
    assert form.lines


def test_batch_norm_coefficients_are_the_compact_dx_multiplied_out():
    form = kernelform.verify(_form("batch_nchw"))
    k = {c.symbol.name: c for c in form.coefficients}
    assert form.code == "dyv*k1 + k0*xs + k2" and sorted(k) == ["k0", "k1", "k2"]
    assert all(c.kind == "stat" for c in k.values())
    assert form.factors == (DY, XS) and form.mean.name == "mu"
    named = {s.name: s for s in form.compact.free_symbols}
    gamma, istd, M = named["gamma"], named["istd"], named["M"]
    assert sympy.simplify(k["k1"].expr - gamma * istd) == 0
    assert sympy.simplify(k["k0"].expr + gamma * istd**2 * named["sum_dy_xhat"] / M) == 0
    assert SHIFT in k["k2"].expr.free_symbols  # the correction mu - shift, exact in float64


@pytest.mark.parametrize("name", ["batch_nchw", "batch_nhwc", "layer_nc", "rms_nc"])
def test_a_wrong_coefficient_fails_the_check(name):
    form = _form(name)
    kernelform.verify(form)
    for c in form.coefficients:
        with pytest.raises(kernelform.KernelFormError, match="do not give back the compact dx"):
            kernelform.verify(_with(form, c.symbol.name, lambda e: 2 * e))
        with pytest.raises(kernelform.KernelFormError):
            kernelform.verify(_with(form, c.symbol.name, lambda e: e + sympy.Rational(1, 10**6)))


def test_the_shift_correction_is_checked_not_assumed():
    """k2 carries mu - shift: with the correction dropped (as if the shift were the exact mean) the check fails,
    because the shift stays a free symbol."""
    form = _form("batch_nchw")
    mu = form.mean
    with pytest.raises(kernelform.KernelFormError):
        kernelform.verify(_with(form, "k2", lambda e: e.xreplace({SHIFT: mu})))


def test_a_wrong_temporary_or_line_fails_the_check():
    form = _form("layer_nc")
    (t, v), = form.temps
    with pytest.raises(kernelform.KernelFormError):
        kernelform.verify(dataclasses.replace(form, temps=((t, 2 * v),)))
    with pytest.raises(kernelform.KernelFormError, match="still reads"):
        kernelform.verify(dataclasses.replace(form, coefficients=form.coefficients[1:]))


def test_a_module_that_prints_another_kernel_fails_the_check():
    form = _form("batch_nchw")
    text = _numba_text("batch_nchw")
    kernelform.check_module(form, text, "batch_nchw")
    for old, new in [("k1 = xb.dtype.type(gv*istd)", "k1 = xb.dtype.type(2*gv*istd)"),
                     ("= dyv*k1 + k0*xs + k2", "= dyv*k1 + k0*xv + k2")]:
        assert old in text
        with pytest.raises(kernelform.KernelFormError, match="regenerate"):
            kernelform.check_module(form, text.replace(old, new), "batch_nchw")


def _evidence(name: str) -> docs.Evidence:
    """Just enough evidence to render a document: no proofs or measurements, the committed Numba module."""
    path = GENERATED / f"{name}_numba.py"
    return docs.Evidence([], [ModuleChecks("numba", path, True, "hash", (1,), ())])


@pytest.mark.parametrize("fmt", ["md", "html", "tex"])
@pytest.mark.parametrize("spec", catalog.CATALOG, ids=lambda s: s.name)
def test_section_7_explains_the_coefficients_in_every_format(spec, fmt):
    text = docs.document(spec, fmt, _evidence(spec.name), link_base=None)
    section = text[text.index("How the kernel computes dx"):]
    form = kernelform.kernel_form(spec)
    for c in form.coefficients:
        code = {"md": f"`{c.symbol.name}`", "html": f"<code>{c.symbol.name}</code>",
                "tex": rf"\texttt{{{c.symbol.name}}}"}[fmt]
        assert code in section, c.symbol
    assert ("Why a shift." if form.shifted else "No shift.") in section
    assert "Checked." in section and "expands to 0" in section
    assert "backward" in section and "staged" in section
    if fmt == "md":
        assert "$$\n\\mathrm{d}x = " in section


def test_the_batch_norm_section_reads_as_the_kernel_runs():
    text = docs.document(preset("batch", "NCHW"), "md", _evidence("batch_nchw"), link_base=None)
    section = text[text.index("### How the kernel computes dx"):]
    assert ("\\mathrm{d}x = {\\mathrm{d}y} \\cdot {k_ {1}} + {k_ {0}} \\cdot \\left(x - \\mathrm{shift}\\right) "
            "+ {k_ {2}}") in section
    assert "- $\\mathrm{shift} = \\mu$ (`shift`)" in section
    assert "`backward_staged(dy, x, gamma, eps=EPS)`" in section


def test_a_failed_check_stops_the_document(monkeypatch):
    real = kernelform.kernel_form

    def wrong(spec):
        return _with(real(spec), "k1", lambda e: -e)

    monkeypatch.setattr(kernelform, "kernel_form", wrong)
    with pytest.raises(kernelform.KernelFormError):
        docs.document(preset("batch", "NCHW"), "md", _evidence("batch_nchw"), link_base=None)


def test_a_stale_module_stops_the_document(tmp_path):
    stale = tmp_path / "batch_nchw_numba.py"
    stale.write_text((GENERATED / "batch_nchw_numba.py").read_text().replace("k2 = xb.dtype.type(gv*istd*(",
                                                                               "k2 = xb.dtype.type(2*gv*istd*("))
    evidence = docs.Evidence([], [ModuleChecks("numba", stale, True, "hash", (1,), ())])
    with pytest.raises(kernelform.KernelFormError, match="regenerate"):
        docs.document(preset("batch", "NCHW"), "md", evidence, link_base=None)
