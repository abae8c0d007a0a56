"""The one way user text (expressions, names, paths, command lines) enters each output format.

Generated Python files, Markdown, HTML and TeX each have one function per context here; nothing else in symbn puts
text it did not build itself into those files. Expressions are already canonical (rebuilt from the checked tree, so
they hold only the grammar's characters); these functions are the second wall, and the only one for paths and
command lines.
"""

from __future__ import annotations

import html
import re
import unicodedata


def _escaped(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unprintable(c: str) -> bool:
    # Cc: control characters (NUL, CR, ...); Cf: format characters (bidirectional overrides that reorder what a
    # reader sees); Zl/Zp: line and paragraph separators; Cs: lone surrogates (undecodable bytes), unencodable.
    return unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def python_comment(text: str) -> str:
    """Text for the inside of one ``#`` comment line: no line break can end the comment early."""
    return "".join(_escaped(c) if _unprintable(c) else c for c in str(text))


def python_docstring(text: str) -> str:
    """Text for the inside of a triple-quoted docstring: no quote or backslash can close it or change it, no
    character the parser refuses (NUL) can break the file. Line breaks are kept."""
    out = []
    for c in str(text):
        if c in '\\"':
            out.append("\\" + c)
        elif c != "\n" and _unprintable(c):
            out.append(_escaped(c))
        else:
            out.append(c)
    return "".join(out)


_MD_TEXT = re.compile(r"([\\`*_\[\]<>|#$~])")


def markdown_text(text: str) -> str:
    """Markdown prose: every character that could start markup (emphasis, code, links, HTML, tables, math)."""
    return _MD_TEXT.sub(r"\\\1", text)


def markdown_code(text: str) -> str:
    """A Markdown code span that no backtick inside can close: fenced by one backtick more than the longest run
    inside, padded with a space where the text starts or ends with one (CommonMark strips one space each side).
    A pipe is escaped, which GitHub requires inside table cells (and shows as a pipe)."""
    text = text.replace("\n", " ").replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_fence(text: str) -> str:
    """The backtick fence for a code block holding *text*: longer than any run of backticks inside."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    return "`" * max(3, max(runs, default=0) + 1)


def html_text(text: str) -> str:
    """HTML element content."""
    return html.escape(text, quote=False)


def html_attribute(text: str) -> str:
    """The value of a double-quoted HTML attribute."""
    return html.escape(text, quote=True)


_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
        "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}"}


def tex_text(text: str) -> str:
    """LaTeX text mode: every special character spelled out, control characters dropped to their escapes."""
    out = []
    for c in text:
        if c in _TEX:
            out.append(_TEX[c])
        elif _unprintable(c):
            out.append(r"\textbackslash{}" + _escaped(c)[1:])
        else:
            out.append(c)
    return "".join(out)
