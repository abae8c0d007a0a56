"""One small writer per document format: how text, code, inline and display mathematics and links are spelled.

The document context is built once in symbn/docgen/document.py from *prose*: plain sentences in which ``$...$`` marks LaTeX and
backticks mark code. A writer turns prose into its format, so the templates only lay out finished strings and the
three formats can never say different things.
"""

from __future__ import annotations

import re

import sympy
from sympy.printing.latex import LatexPrinter

from symbn import escape
from symbn.core.printing import latex_name

LONG = 240  # characters of LaTeX beyond which a formula is split into lines where the format allows it


def tex_lines(lhs: str, e: sympy.Expr, op: str = "=") -> list[str]:
    """'lhs = e' as lines: the whole equation when short, else one top-level term a line, in the printed order."""
    whole = f"{lhs} {op} {tex(e)}"
    if len(whole) <= LONG or not isinstance(e, sympy.Add):
        return [whole]
    order = LatexPrinter()._as_ordered_terms  # the order sympy.latex prints terms in
    terms = []
    for t in order(e):
        adds = [f for f in t.args if f.is_Add] if t.is_Mul else []
        if len(tex(t)) > 2 * LONG and len(adds) == 1:  # c*(a + b + ...), too wide for a line: c*a + c*b + ...
            terms += [sympy.Mul(*(f for f in t.args if f is not adds[0])) * a for a in order(adds[0])]
        else:
            terms.append(t)
    lines = [f"{lhs} {op} {tex(terms[0])}"]
    for t in terms[1:]:
        negative = t.could_extract_minus_sign()
        lines.append(("- " if negative else "+ ") + tex(-t if negative else t))
    return lines


def tex(e: sympy.Expr, spelled: dict | None = None) -> str:
    """LaTeX for documents: printers.latex's symbol names, with a visible product. Names here are words (istd,
    dscaled), and side by side they would read as one: d istd times istd squared must not look like distdistd^2.
    *spelled*: LaTeX for some symbols instead of their names (the kernel's xs as (x - shift))."""
    names = {s: "{" + latex_name(s.name) + "}" for s in e.free_symbols if isinstance(s, sympy.Symbol)}
    return sympy.latex(e, symbol_names=names | (spelled or {}), mul_symbol="dot")


_PROSE = re.compile(r"(\$[^$]+\$|`[^`]+`)")


class Writer:
    ext = ""

    def text(self, s: str) -> str:
        raise NotImplementedError

    def code(self, s: str) -> str:
        raise NotImplementedError

    def math(self, latex: str) -> str:
        raise NotImplementedError

    def display(self, latex: str) -> str:
        raise NotImplementedError

    def display_lines(self, lines: list[str]) -> str:
        """One formula given as lines (an equation, then '+ term', '- term', ...): one display where the format
        cannot break lines inside mathematics (GitHub, LaTeX, which scales it instead)."""
        return self.display(" ".join(lines))

    def link(self, label: str, href: str) -> str:
        raise NotImplementedError

    def verbatim(self, s: str) -> str:
        """Text for a code block of the format (escaped where the format needs it)."""
        return s

    def prose(self, s: str) -> str:
        out = []
        for part in _PROSE.split(s):
            if part.startswith("$") and part.endswith("$") and len(part) > 1:
                out.append(self.math(part[1:-1]))
            elif part.startswith("`") and part.endswith("`") and len(part) > 1:
                out.append(self.code(part[1:-1]))
            elif part:
                out.append(self.text(part))
        return "".join(out)


class Markdown(Writer):
    """GitHub Markdown with $...$ mathematics.

    GitHub applies Markdown's backslash escapes and emphasis rules to the inside of $...$ (github/markup#1575), so
    mathematics is written defensively: a space after every underscore (an underscore followed by a space can never
    open emphasis, and TeX ignores the space), and no backslash before punctuation (\\, becomes \\thinspace)."""

    ext = "md"

    def text(self, s: str) -> str:
        return escape.markdown_text(s)

    def code(self, s: str) -> str:
        return escape.markdown_code(s)

    @staticmethod
    def _safe(latex: str) -> str:
        latex = latex.replace(r"\,", r"\thinspace ").replace(r"\{", r"\lbrace ").replace(r"\}", r"\rbrace ")
        latex = latex.replace(r"\;", r"\thickspace ").replace(r"\!", r"\negthinspace ")
        latex = latex.replace("|", r"\vert ").replace("<", r"\lt ").replace(">", r"\gt ")
        return re.sub(r"_(?! )", "_ ", latex)

    def math(self, latex: str) -> str:
        return f"${self._safe(latex)}$"

    def display(self, latex: str) -> str:
        return f"$$\n{self._safe(latex)}\n$$"

    def link(self, label: str, href: str) -> str:
        return f"[{self.text(label)}]({href})"


class Html(Writer):
    """HTML with MathML (from latex2mathml): Chromium, Firefox and Safari lay it out natively, with no script."""

    ext = "html"

    def text(self, s: str) -> str:
        return escape.html_text(s)

    def code(self, s: str) -> str:
        return f"<code>{escape.html_text(s)}</code>"

    @staticmethod
    def _mathml(latex: str, display: str) -> str:
        from latex2mathml.converter import convert

        # latex2mathml drops the upright variant of a one-letter \mathrm (the d of dx): \text keeps it upright.
        latex = re.sub(r"\\mathrm\{([A-Za-z])\}", r"\\text{\1}", latex)
        return convert(latex, display=display)

    def math(self, latex: str) -> str:
        return self._mathml(latex, "inline")

    def display(self, latex: str) -> str:
        return f'<div class="display">{self._mathml(latex, "block")}</div>'

    def display_lines(self, lines: list[str]) -> str:
        """Browsers do not break MathML lines: a long formula is stacked one term a line, the terms indented."""
        if len(lines) == 1:
            return self.display(lines[0])
        # Inline math in left-aligned blocks (block math is centred); the CSS restores display style (math-style).
        rows = [f'<div class="line">{self._mathml(line, "inline")}</div>' for line in lines]
        return '<div class="display long">' + "".join(rows) + "</div>"

    def link(self, label: str, href: str) -> str:
        return f'<a href="{escape.html_attribute(href)}">{escape.html_text(label)}</a>'

    def verbatim(self, s: str) -> str:
        return escape.html_text(s)


class Tex(Writer):
    """A LaTeX article body; long display formulas are scaled to the line width rather than running off the page."""

    ext = "tex"
    _LONG = 150  # characters of LaTeX source beyond which a display formula may be wider than the text

    def text(self, s: str) -> str:
        return escape.tex_text(s)

    def code(self, s: str) -> str:
        return r"\texttt{" + self.text(s) + "}"

    def math(self, latex: str) -> str:
        return f"${latex}$"

    def display(self, latex: str) -> str:
        if len(latex) > self._LONG:
            return "\\[\n\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{$\\displaystyle " \
                   + latex + "$}\n\\]"
        return f"\\[\n{latex}\n\\]"

    def link(self, label: str, href: str) -> str:  # noqa: ARG002 - a standalone .tex has no place to link to
        return self.code(label)


WRITERS = {"md": Markdown(), "html": Html(), "tex": Tex()}
