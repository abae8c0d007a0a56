"""How the Numba training backward runs the compact dx: the coefficients it hoists out of the loop over a statistic's
elements, taken from the code generator itself, and the check that they give back the compact dx exactly.

The kernel does not evaluate the compact dx of the derivation as written: symbn.codegen.elementwise rearranges it
into multiply-adds of ``xs = x - shift`` and ``dy`` whose coefficients are fixed per statistic (or per parameter),
and the Numba printer (symbn.codegen.backends.numba) names those coefficients k0, k1, ... as it meets them. Here the
printer's own passes for the backward's dx loop (``dx_loop``, which its ``statements`` prints) are read, so the names
and expressions are the printer's, not a copy; then

- ``verify`` substitutes the coefficients (and the shared parts t0, ...) into the kernel's expression and checks with
  SymPy that the result is the compact dx exactly, with the shift left a free symbol;
- ``check_module`` checks that the quoted module prints exactly these coefficients and this expression, so that a
  document cannot explain a kernel other than the one it shows.

Both raise KernelFormError: a document never says what was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from symbn.codegen.backends import numba as printer
from symbn.codegen.elementwise import SHIFT, XS, Elementwise
from symbn.codegen.lowering import Lowering, lower
from symbn.codegen.plan import plan
from symbn.core.derive import derive
from symbn.core.spec import Spec
from symbn.core.symbols import DY, X


class KernelFormError(Exception):
    """The kernel's coefficients do not give back the compact dx, or the module does not print them."""


@dataclass(frozen=True)
class Coefficient:
    symbol: sympy.Symbol  # the printer's name: k0, k1, ... (ks0: one the sums' loop made first)
    expr: sympy.Expr  # in the statistics, the named sums, gamma/beta, M, eps and shift
    kind: str  # "stat": fixed per statistic; "param": per parameter index; "both": varies with both; "scalar"


@dataclass(frozen=True)
class KernelForm:
    spec: Spec
    dx: sympy.Expr  # the kernel's dx in its own names: coefficients, temporaries, xs (or x), dy
    code: str  # dx as the kernel prints it
    temps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # shared parts (t0 = ...) dx reads, in the kernel's order
    coefficients: tuple[Coefficient, ...]  # those dx reads, directly or through temps, in the printer's order
    others: tuple[sympy.Symbol, ...]  # the loop's other coefficients: for the parameter-gradient summands
    mean: sympy.Symbol | None  # the statistic the shift rounds (shift = mean in the input's dtype); None: no shift
    columns: bool  # column kernels: the wrapper computes the coefficients as arrays and passes them in
    sums: tuple[tuple[sympy.Symbol, sympy.Expr], ...]  # (q0, dy), (q1, dy*xs): the sums' loop, where it splits them
    compact: sympy.Expr  # the compact dx with the normalized coordinate written out (x and the statistics)
    lines: tuple[str, ...]  # what the module must print: each coefficient's and temporary's definition
    stages: tuple[str, ...] = ()  # what verify did, filled in by verify

    @property
    def shifted(self) -> bool:
        """dx reads x - shift."""
        return self.mean is not None and XS in self.expanded().free_symbols

    @property
    def factors(self) -> tuple[sympy.Symbol, ...]:
        """The per-element factors dx's terms are collected by (dy, xs or x), where dx is affine in each of them; ()
        where it is not (the coefficients then hoist what they can of a more general expression)."""
        e = self.expanded()
        factors = [s for s in (DY, XS, X) if s in e.free_symbols]
        try:
            poly = sympy.Poly(sympy.expand(e), *factors)
        except sympy.PolynomialError:
            return ()
        return tuple(factors) if factors and all(poly.degree(s) <= 1 for s in factors) else ()

    def expanded(self) -> sympy.Expr:
        """dx with the temporaries substituted: in coefficients, xs (or x) and dy."""
        e = self.dx
        for t, v in reversed(self.temps):
            e = e.xreplace({t: v})
        return e


def kernel_form(spec: Spec) -> KernelForm:
    """The Numba training backward's dx loop for *spec*, as the printer builds it."""
    lw = lower(plan(derive(spec)))
    return _form(lw)


def _form(lw: Lowering) -> KernelForm:
    p = lw.plan
    loop = printer.dx_loop(lw)
    sc, passes, exprs, shifted = loop
    dx_pass = passes[-1]
    ew = Elementwise(p)
    known = dx_pass.known
    shared, finals = dx_pass.shared, dx_pass.finals
    dx = finals[0]
    temps = _needed(dx, shared)
    expanded = dx
    for t, v in reversed(temps):
        expanded = expanded.xreplace({t: v})
    names = {k: e for e, k in known.items()}
    used = expanded.free_symbols & set(names)
    order = list(names)
    coefficients = tuple(Coefficient(k, names[k], ew.klass(names[k]) or "scalar")
                         for k in sorted(used, key=order.index))
    others = tuple(k for k in order if k not in used)
    lines = tuple(_definitions(passes, {c.symbol.name for c in coefficients}))
    lines += tuple(f"{t} = {sc.code(v)}" for t, v in temps)
    return KernelForm(
        spec=p.spec, dx=dx, code=dx_pass.codes[0], temps=tuple(temps), coefficients=coefficients, others=others,
        mean=lw.mean if shifted else None, columns=lw.columns is not None,
        sums=tuple(lw.split.monomials) if lw.numba_split else (),
        compact=p.dx.xreplace(dict(p.coordinates)), lines=lines)


def _needed(dx: sympy.Expr, shared: list) -> list:
    """The shared parts dx reads, directly or through one another, in their order."""
    need = set(dx.free_symbols)
    out = []
    for t, v in reversed(shared):
        if t in need:
            out.append((t, v))
            need |= v.free_symbols
    return out[::-1]


def _definitions(passes, names: set[str]) -> list[str]:
    """Every line the passes print that defines one of the coefficients *names* (in the kernel, per statistic or per
    element, or in the wrapper, which passes an array in)."""
    out = []
    for ps in passes:
        candidates = ps.stat_lines + ps.elem_lines + [f"{name} = {code}" for name, code in ps.wrapper]
        for line in candidates:
            target = line.split(" = ", 1)[0]
            if target.removeprefix("p_") in names and line not in out:
                out.append(line)
    return out


def verify(form: KernelForm) -> KernelForm:
    """*form* with what was checked, after checking with SymPy that substituting the coefficients and temporaries
    into the kernel's dx, and x - shift for xs, gives the compact dx exactly (shift a free symbol). Raises
    KernelFormError otherwise."""
    e = form.expanded().xreplace({c.symbol: c.expr for c in form.coefficients}).xreplace({XS: X - SHIFT})
    left = e.free_symbols - form.compact.free_symbols - {SHIFT, X}  # a kernel name nothing defined
    if left:
        raise KernelFormError(f"{form.spec.name}: the kernel's dx still reads {sorted(map(str, left))} after the "
                              "coefficients are substituted")
    difference = sympy.expand(e - form.compact)
    stages = ["expand"]
    if difference != 0:
        difference = sympy.simplify(difference)
        stages.append("simplify")
    if difference != 0:
        raise KernelFormError(f"{form.spec.name}: the kernel's coefficients do not give back the compact dx: "
                              f"{form.code} with {', '.join(f'{c.symbol} = {c.expr}' for c in form.coefficients)} "
                              f"differs from it by {difference}")
    return KernelForm(**{**form.__dict__, "stages": tuple(stages)})


def check_module(form: KernelForm, text: str, where: str) -> None:
    """Raises KernelFormError unless *text* (the quoted kernel) prints every line of *form* and its dx."""
    have = {line.strip() for line in text.splitlines()}
    missing = [line for line in form.lines if line not in have]
    if not any(line.endswith(" = " + form.code) for line in have):
        missing.append("... = " + form.code)
    if missing:
        raise KernelFormError(f"{where} does not print the backward's dx as the generator does now (regenerate it: "
                              f"symbn generate --catalog); missing: {'; '.join(missing)}")
