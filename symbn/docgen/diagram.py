"""The forward graph as a picture: Mermaid for GitHub Markdown, inline SVG for HTML, TikZ for LaTeX.

One layout serves all three: a row per node in graph order (so every edge points down or sideways), and three lanes
by what a node varies over: parameters (gamma, beta), elements (the shape of x) and statistics. An edge that would run
straight through another node of its lane is drawn as a curve around it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import sympy

from symbn.docgen.formats import tex as latex  # documents print products visibly
from symbn.core.graph import ELEM, Graph
from symbn.core.printing import latex_name
from symbn.core.symbols import X

PARAM_LANE, ELEM_LANE, STAT_LANE = 0, 1, 2
_UNICODE = {"gamma": "γ", "beta": "β", "mu": "μ", "eps": "ε", "xhat": "x̂", "momentum": "m"}


def plain(e: sympy.Expr) -> str:
    """A one-line Unicode rendering for diagram labels: Σ for the set sum, √, ², · and Greek letters."""
    s = sympy.sstr(e)
    s = re.sub(r"\bpsum\(", "Σp(", s)
    s = re.sub(r"\bsum\(", "Σ(", s).replace("sqrt(", "√(")
    s = s.replace("**2", "²").replace("**", "^").replace("*", "·").replace("-", "−")
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: _UNICODE.get(m.group(0), m.group(0)), s)


@dataclass(frozen=True)
class Box:
    key: str  # an identifier, unique in the diagram
    label: str  # Unicode text
    tex: str  # the same label as LaTeX mathematics
    lane: int
    row: int
    kind: str  # "input", "elem" or "stat"


@dataclass(frozen=True)
class Layout:
    boxes: tuple[Box, ...]
    edges: tuple[tuple[str, str], ...]


def layout(g: Graph) -> Layout:
    consumers = {s: next(i for i, n in enumerate(g.nodes) if s in n.operands) for s in g.leaves}
    boxes = []
    for leaf in g.leaves:
        lane = ELEM_LANE if leaf == X else PARAM_LANE
        row = 0 if leaf == X else consumers[leaf] + 1
        boxes.append(Box("in_" + leaf.name, plain(leaf), latex_name(leaf.name), lane, row, "input"))
    for i, n in enumerate(g.nodes, 1):
        lane = ELEM_LANE if n.kind == ELEM else STAT_LANE
        label = f"{plain(n.symbol)} = {plain(n.expr)}"
        tex = f"{latex_name(n.name)} = {latex(n.expr)}"
        boxes.append(Box("n_" + n.name, label, tex, lane, i, "elem" if n.kind == ELEM else "stat"))
    key = {leaf: "in_" + leaf.name for leaf in g.leaves} | {n.symbol: "n_" + n.name for n in g.nodes}
    edges = tuple((key[o], key[n.symbol]) for n in g.nodes for o in n.operands if o in key)
    return Layout(tuple(boxes), edges)


def mermaid(lay: Layout) -> list[str]:
    """Lines of a Mermaid flowchart (without the code fence)."""
    shape = {"input": ('(("', '"))'), "elem": ('["', '"]'), "stat": ('(["', '"])')}
    lines = ["flowchart TD"]
    for b in lay.boxes:
        left, right = shape[b.kind]
        lines.append(f"    {b.key}{left}{b.label.replace(chr(34), '#quot;')}{right}")
    lines += [f"    {a} --> {b}" for a, b in lay.edges]
    lines.append("    classDef input fill:#eeeeee,stroke:#777777")
    lines.append("    classDef elem fill:#e6f0fa,stroke:#3b6ea5")
    lines.append("    classDef stat fill:#fcefdc,stroke:#b8741a")
    for kind in ("input", "elem", "stat"):
        keys = [b.key for b in lay.boxes if b.kind == kind]
        if keys:
            lines.append(f"    class {','.join(keys)} {kind}")
    return lines


# SVG geometry, in pixels. Labels use a monospace font so their width is known without measuring text.
_CHAR, _PAD, _BOX_H, _ROW_H, _GAP, _MARGIN = 7.8, 18, 28, 44, 56, 12
_FILL = {"input": ("#eeeeee", "#777777"), "elem": ("#e6f0fa", "#3b6ea5"), "stat": ("#fcefdc", "#b8741a")}


def svg(lay: Layout, title: str) -> str:
    width = {b.key: round(len(b.label) * _CHAR + 2 * _PAD) for b in lay.boxes}
    lane_w = {lane: max([width[b.key] for b in lay.boxes if b.lane == lane], default=0) for lane in range(3)}
    lane_x, x = {}, _MARGIN
    for lane in range(3):
        lane_x[lane] = x + lane_w[lane] / 2
        x += lane_w[lane] + (_GAP if lane_w[lane] else 0)
    total_w = round(x - _GAP + _MARGIN)
    rows = max(b.row for b in lay.boxes) + 1
    total_h = rows * _ROW_H + 2 * _MARGIN
    at = {b.key: (lane_x[b.lane], _MARGIN + b.row * _ROW_H + _BOX_H / 2) for b in lay.boxes}
    box = {b.key: b for b in lay.boxes}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {total_w} {total_h}" '
           f'width="{total_w}" height="{total_h}" class="graph">',
           f"<title>{html.escape(title)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for a, b in lay.edges:
        out.append(_edge(box[a], box[b], at, width, lay))
    for b in lay.boxes:
        cx, cy = at[b.key]
        w = width[b.key]
        fill, stroke = _FILL[b.kind]
        radius = _BOX_H / 2 if b.kind != "elem" else 4
        out.append(f'<rect x="{cx - w / 2:g}" y="{cy - _BOX_H / 2:g}" width="{w}" height="{_BOX_H}" rx="{radius:g}" '
                   f'fill="{fill}" stroke="{stroke}"/>')
        out.append(f'<text x="{cx:g}" y="{cy + 4.5:g}" text-anchor="middle">{html.escape(b.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _edge(a: Box, b: Box, at: dict, width: dict, lay: Layout) -> str:
    (ax, ay), (bx, by) = at[a.key], at[b.key]
    style = 'fill="none" stroke="#555" marker-end="url(#arrow)"'
    if a.lane == b.lane:
        x0, y0, x1, y1 = ax, ay + _BOX_H / 2, bx, by - _BOX_H / 2
        between = [c for c in lay.boxes if c.lane == a.lane and a.row < c.row < b.row]
        if not between:
            return f'<path d="M{x0:g},{y0:g} L{x1:g},{y1:g}" {style}/>'
        # Around the nodes in between, on their left: start and end on the boxes' left edges.
        left = min(ax - width[a.key] / 2, bx - width[b.key] / 2, *(at[c.key][0] - width[c.key] / 2 for c in between))
        x0, x1 = ax - width[a.key] / 2, bx - width[b.key] / 2
        bend = left - 28
        return (f'<path d="M{x0:g},{ay:g} C{bend:g},{ay:g} {bend:g},{by:g} {x1:g},{by:g}" {style}/>')
    right = b.lane > a.lane
    x0 = ax + (width[a.key] / 2 if right else -width[a.key] / 2)
    x1 = bx + (-width[b.key] / 2 if right else width[b.key] / 2)
    return f'<path d="M{x0:g},{ay:g} L{x1:g},{by:g}" {style}/>'


def tikz(lay: Layout) -> list[str]:
    """Lines of a tikzpicture with the same lanes and rows (LaTeX labels; TikZ clips edges to the boxes)."""
    fill = {"input": "black!8", "elem": "blue!8", "stat": "orange!12"}
    lines = [r"\begin{tikzpicture}[x=1cm, y=-0.95cm, every node/.style={draw, rounded corners=2pt, "
             r"inner sep=3pt, font=\small}, >=stealth]"]
    lane_x = {PARAM_LANE: 0.0, ELEM_LANE: 3.6, STAT_LANE: 8.6}
    for b in lay.boxes:
        lines.append(f"  \\node[fill={fill[b.kind]}] ({b.key.replace('_', '')}) at ({lane_x[b.lane]:g},{b.row:g}) "
                     f"{{${b.tex}$}};")
    for a, b in lay.edges:
        box = {c.key: c for c in lay.boxes}
        skip = box[a].lane == box[b].lane and any(
            c.lane == box[a].lane and box[a].row < c.row < box[b].row for c in lay.boxes)
        how = " to[out=180, in=180, looseness=0.6] " if skip else " -- "
        src = a.replace("_", "") + (".west" if skip else "")
        dst = b.replace("_", "") + (".west" if skip else "")
        lines.append(f"  \\draw[->] ({src}){how}({dst});")
    lines.append(r"\end{tikzpicture}")
    return lines
