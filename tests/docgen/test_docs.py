"""The derivation documents: docs/ is fresh, the Markdown is well formed for GitHub, the batch-norm document goes from
the graph to the compact dx without a gap, `symbn derive --format` writes all three formats, and every HTML document
renders in a real browser (headless Chromium) with its mathematics laid out."""

import html
import json
import re
import shutil
import subprocess

import pytest
import sympy

from helpers import GENERATED, ROOT, chromium
from symbn import preset
from symbn.codegen import catalogue as catalog
from symbn import derive
from symbn.docgen import document as docs
from symbn.cli import main
from symbn.docgen.formats import WRITERS, tex_lines
from symbn.docgen.evidence import kernel_excerpt
from symbn.core.printing import latex_name
from symbn.core.symbols import DY, GAMMA, XHAT, M, rsum

DOCS = ROOT / "docs"
MD_NAMES = [f"{spec.name}.md" for spec in catalog.CATALOG] + ["index.md"]
HTML_NAMES = [f"{spec.name}.html" for spec in catalog.CATALOG] + ["index.html"]


@pytest.fixture(scope="module")
def rendered():
    """The catalogue's documents rendered now (proofs and finite-difference checks included: a few minutes)."""
    return docs.catalog_documents()


def test_docs_folder_is_fresh(rendered):
    files, ok = rendered
    diffs = docs.stale(DOCS, files)
    assert not diffs, "docs/ is stale; run `symbn docs`:\n" + "".join(diffs)[:4000]
    assert ok, "a proof or a finite-difference check failed: see the regenerated documents"


def test_committed_measurements_passed():
    for name in MD_NAMES[:-1]:
        text = (DOCS / name).read_text()
        begin, end = docs.MEASURED["md"]
        region = text[text.index(begin):text.index(end)]
        rows = [r for r in region.splitlines() if r.startswith("| ") and not r.startswith("| check")]
        assert len(rows) >= 6, name  # both backends, at least dx, a parameter gradient and the Taylor test each
        assert all(r.rstrip().endswith("| passed |") for r in rows), name


def test_freshness_ignores_only_measured_values(tmp_path):
    text = "\n".join(["hash `abc`", docs.MEASURED["md"][0], "| dx | 2.1e-09 | <= 1e-7 | passed |",
                      docs.MEASURED["md"][1], "M = 4"])
    (tmp_path / "a.md").write_text(text.replace("2.1e-09", "3.7e-10"))
    assert docs.stale(tmp_path, {"a.md": text}) == []
    for changed in (text.replace("passed", "FAILED"), text.replace("abc", "abd"), text.replace("M = 4", "M = 5")):
        assert docs.stale(tmp_path, {"a.md": changed}), changed


def _math_spans(md: str) -> tuple[list[str], list[str]]:
    """(display blocks, inline spans) of a Markdown document, outside code; AssertionError when unbalanced."""
    md = re.sub(r"^```.*?^```", "", md, flags=re.S | re.M)
    md = re.sub(r"`[^`\n]*`", "", md)
    displays = []
    lines, body = md.split("\n"), []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("$$"):
            assert lines[i].strip() == "$$", f"$$ must stand on its own line: {lines[i]!r}"
            j = lines.index("$$", i + 1) if "$$" in lines[i + 1:] else None
            assert j is not None, f"unclosed $$ after line {i + 1}"
            displays.append("\n".join(lines[i + 1:j]))
            i = j + 1
            continue
        body.append(lines[i])
        i += 1
    inline = []
    for n, line in enumerate(body, 1):
        dollars = [m.start() for m in re.finditer(r"(?<!\\)\$", line)]
        assert len(dollars) % 2 == 0, f"unbalanced $ in line {n}: {line!r}"
        inline += [line[a + 1:b] for a, b in zip(dollars[::2], dollars[1::2])]
    return displays, inline


@pytest.mark.parametrize("name", MD_NAMES)
def test_markdown_math_is_balanced_and_github_safe(name):
    _check_markdown_math((DOCS / name).read_text())


def test_an_epilogue_document_shows_the_epilogue_and_its_second_order(tmp_path):
    assert main(["derive", "layer", "--layout", "NC", "--epilogue", "add_relu", "--format", "md", "-o",
                 str(tmp_path), "-q"]) == 0
    text = (tmp_path / "layer_nc_add_relu.md").read_text()
    _check_markdown_math(text)
    assert "- **epilogue**: $y = \\max\\left(0, {r} + {z}\\right)$" in text
    assert "compact dr" in text and "gr = 0" in text and "gbeta = 0" in text  # first and second order proved
    assert "failed" not in text


def _check_markdown_math(text: str) -> None:
    displays, inline = _math_spans(text)
    assert inline, "no inline mathematics found"
    for tex_ in displays + inline:
        assert tex_.strip(), "empty mathematics"
        assert "$" not in tex_ and "\\\\" not in tex_, tex_
        assert tex_.count("{") == tex_.count("}"), tex_
        assert len(re.findall(r"\\left(?![a-z])", tex_)) == len(re.findall(r"\\right(?![a-z])", tex_)), tex_
        # GitHub runs emphasis and backslash escapes over $...$: no underscore may open emphasis, no \, escape.
        assert not re.search(r"_[^ ]", tex_), tex_
        assert not re.search(r"\\[,;:!{}|]", tex_), tex_


_NODE = re.compile(r'^    ([A-Za-z_]\w*)(\(\("[^"]*"\)\)|\["[^"]*"\]|\(\["[^"]*"\]\))$')
_EDGE = re.compile(r"^    ([A-Za-z_]\w*) --> ([A-Za-z_]\w*)$")
_CLASSDEF = re.compile(r"^    classDef (\w+) [\w#:,-]+$")
_CLASS = re.compile(r"^    class ([\w,]+) (\w+)$")


def mermaid_problems(block: str) -> list[str]:
    lines = block.splitlines()
    problems = [] if re.fullmatch(r"flowchart (TD|TB|LR|RL|BT)", lines[0]) else [f"header {lines[0]!r}"]
    declared, edges, classes, used = set(), [], set(), []
    for line in lines[1:]:
        if m := _NODE.match(line):
            problems += [f"{m.group(1)} declared twice"] if m.group(1) in declared else []
            declared.add(m.group(1))
        elif m := _EDGE.match(line):
            edges.append(m.groups())
        elif m := _CLASSDEF.match(line):
            classes.add(m.group(1))
        elif m := _CLASS.match(line):
            used.append((m.group(1).split(","), m.group(2)))
        else:
            problems.append(f"not a node, edge or class line: {line!r}")
    problems += [f"edge {a} --> {b} uses an undeclared node" for a, b in edges if {a, b} - declared]
    problems += [f"class of undeclared {k}" for keys, _ in used for k in keys if k not in declared]
    problems += [f"undefined class {c}" for _, c in used if c not in classes]
    return problems + ([] if edges else ["no edges"])


@pytest.mark.parametrize("name", MD_NAMES[:-1])
def test_mermaid_blocks_are_valid(name):
    blocks = re.findall(r"^```mermaid\n(.*?)^```", (DOCS / name).read_text(), flags=re.S | re.M)
    assert len(blocks) == 1
    assert mermaid_problems(blocks[0]) == []


def test_mermaid_check_can_fail():
    good = "flowchart TD\n    a[\"a\"]\n    b[\"b\"]\n    a --> b"
    assert mermaid_problems(good) == []
    assert mermaid_problems(good + "\n    a --> c")
    assert mermaid_problems(good.replace("flowchart TD", "graph"))
    assert mermaid_problems(good + '\n    c["unclosed]')


def test_batch_norm_document_goes_from_nine_steps_to_the_compact_dx():
    d = derive(preset("batch", "NCHW"))
    named = {s.name: s for s in d.dx.free_symbols}  # the engine's symbols, with their assumptions
    istd, sum_dy, sum_dy_xhat = named["istd"], named["sum_dy"], named["sum_dy_xhat"]
    assert str(d.dx) == "gamma*istd*(M*dy - sum_dy - sum_dy_xhat*xhat)/M"
    assert sympy.expand(d.dx - GAMMA * istd / M * (M * DY - sum_dy - XHAT * sum_dy_xhat)) == 0
    assert dict(d.reductions) == {sum_dy: rsum(DY), sum_dy_xhat: rsum(DY * XHAT)}
    md = (DOCS / "batch_nchw.md").read_text()
    steps = re.findall(r"^### Backward step (\d) of 9: .* \(forward step (\d)\)$", md, flags=re.M)
    assert [(int(a), int(b)) for a, b in steps] == [(k, 10 - k) for k in range(1, 10)]
    simplification = md[md.index("## 4. From staged to compact"):md.index("## 5.")]
    w = WRITERS["md"]
    final = w.display_lines(tex_lines(r"\mathrm{d}x", d.dx))
    last_stage = simplification[simplification.rindex("Named reductions, factored"):]
    assert last_stage.index(final) < last_stage.index("The compact backward")
    for s, e in d.reductions:
        assert w.display_lines(tex_lines(latex_name(s.name), e)) in simplification
    assert simplification.count("$$") >= 2 * len(d.rewrites)  # every stage changed dx and shows it
    assert "```mermaid" in md and "sum(dy*xhat)" not in md  # mathematics, not SymPy's text form
    kernels, excerpt = kernel_excerpt((GENERATED / "batch_nchw_numba.py").read_text())
    assert kernels and f"```python\n{excerpt}\n```" in md
    page = (DOCS / "batch_nchw.html").read_text()
    assert "<svg" in page and "<math" in page and "$" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)


@pytest.mark.parametrize("fmt", ["md", "html", "tex"])
def test_derive_format_writes_each_format(fmt, tmp_path, capsys):
    assert main(["derive", "batch", "--layout", "NC", "--format", fmt, "-o", str(tmp_path)]) == 0
    text = (tmp_path / f"batch_nc.{fmt}").read_text()
    assert "Backward step 9 of 9" in text and ("\\_backward" if fmt == "tex" else "_backward") in text
    if fmt == "tex":
        assert text.split("\n", 1)[1].startswith(r"\documentclass") and text.rstrip().endswith(r"\end{document}")
        if shutil.which("pdflatex"):
            run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"batch_nc.{fmt}"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout[-3000:]
    if fmt == "html":
        assert "http" not in re.sub(r'xmlns="http://www\.w3\.org/[^"]*"', "", text)  # nothing from the network


def test_derive_format_text_is_still_the_default_and_stdout_works(capsys):
    assert main(["derive", "batch", "--layout", "NC"]) == 0
    assert "compact backward" in capsys.readouterr().out
    assert main(["derive", "rms", "--layout", "NC", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!-- symbn derivation document: rms_nc -->") and "Backward step 6 of 6" in out


_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

# Runs inside the page: sizes of the MathML, stacked fractions, the diagram, and any LaTeX left as text.
_PROBE = """<script>(function () {
  const MML = "http://www.w3.org/1998/Math/MathML";
  const box = e => e.getBoundingClientRect();
  const maths = Array.from(document.getElementsByTagNameNS(MML, "math"));
  const fracs = Array.from(document.getElementsByTagNameNS(MML, "mfrac"));
  const out = {
    math: maths.length,
    zero: maths.filter(m => !(box(m).width > 0 && box(m).height > 0)).length,
    fracs: fracs.length,
    flat: fracs.filter(f => {
      if (f.children.length != 2) return true;
      const [a, b] = [box(f.children[0]), box(f.children[1])];
      return !(a.bottom <= b.top + 1 && a.left < b.right && b.left < a.right);  // stacked, one over the other
    }).length,
    svg: Array.from(document.querySelectorAll("svg")).map(s => [box(s).width, box(s).height]),
    raw: (document.body.innerText.match(/\\\\[A-Za-z]+|\\$/g) || []).slice(0, 10),
  };
  const pre = document.createElement("pre");
  pre.id = "symbn-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();</script>"""


@pytest.mark.chromium
@pytest.mark.parametrize("name", HTML_NAMES)
def test_html_renders_in_chromium(name, tmp_path):
    browser = chromium()
    page = (DOCS / name).read_text()
    probe = tmp_path / name
    probe.write_text(page.replace("</body>", _PROBE + "\n</body>"))
    common = [browser, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400"]
    dom = subprocess.run(common + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="symbn-probe">(.*?)</pre>', dom.stdout, flags=re.S)
    assert found, f"the page did not load or the probe did not run: {dom.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["math"] > 0 and result["zero"] == 0, result
    # Numerator above denominator in every fraction: the browser really laid out the MathML.
    assert result["fracs"] > 0 and result["flat"] == 0, result
    assert result["raw"] == [], f"LaTeX source visible on the page: {result['raw']}"
    if name != "index.html":
        assert result["svg"] and all(w > 100 and h > 100 for w, h in result["svg"]), result
    shot = tmp_path / (name + ".png")
    subprocess.run(common + [f"--screenshot={shot}", (DOCS / name).as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.chromium
def test_html_probe_can_fail(tmp_path):
    browser = chromium()
    bad = tmp_path / "bad.html"
    # As a browser without MathML layout would show it: every MathML element an ordinary inline box.
    no_mathml = "<style>math, math * { display: inline !important; }</style>"
    flat = "<math><mfrac><mi>a</mi><mi>b</mi></mfrac></math>"
    bad.write_text(f"<html><head>{no_mathml}</head><body><p>$\\frac{{a}}{{b}}$</p><math></math>{flat}{_PROBE}"
                   "</body></html>")
    dom = subprocess.run([browser, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", bad.as_uri()],
                         capture_output=True, text=True, timeout=120)
    result = json.loads(html.unescape(re.search(r'<pre id="symbn-probe">(.*?)</pre>', dom.stdout, re.S).group(1)))
    assert result["zero"] == 1 and result["raw"] == ["$", "\\frac", "$"]
    assert result["fracs"] == 1 and result["flat"] == 1


def test_every_catalogue_entry_has_both_documents_and_the_index_links_them():
    for name in MD_NAMES + HTML_NAMES:
        assert (DOCS / name).is_file(), name
    index_md = (DOCS / "index.md").read_text()
    for spec in catalog.CATALOG:
        assert f"({spec.name}.md)" in index_md and f'href="{spec.name}.html"' in (DOCS / "index.html").read_text()


def test_readme_links_the_index_and_shows_the_engine_compact_result():
    readme = (ROOT / "README.md").read_text()
    d = derive(preset("batch", "NCHW"))
    dx = next(e for s, e in d.compact if s.name == "dx")
    assert "(docs/index.md)" in readme
    assert WRITERS["md"].display_lines(tex_lines(latex_name("dx"), dx)) in readme


@pytest.mark.parametrize("name", [spec.name for spec in catalog.CATALOG])
def test_section_5_has_running_statistics_only_where_the_spec_keeps_them(rendered, name):
    """Batch norm: the eval-mode backward and both conventions' tables. The others: why eval mode uses the input's
    own statistics, no convention, and the eval check that forward_eval is forward_train's y."""
    files, _ = rendered
    spec = {s.name: s for s in catalog.CATALOG}[name]
    md = files[f"{name}.md"]
    section = md[md.index("## 5. Eval mode and running statistics"):md.index("## 6.")]
    conventions = re.findall(r"^\*\*(PyTorch|Keras) convention", section, flags=re.M)
    if spec.tracks_running:
        assert conventions == ["PyTorch", "Keras"] and "running}" in section and "$$" in section
        assert "**running statistics**: pytorch convention, momentum 0.1" in md
        assert "eval: central differences dx" in md
    else:
        assert conventions == [] and "$$" not in section
        assert "Eval mode uses the input's own statistics, as training does." in section
        assert "do not span the batch axis 0" in section and "depend on the batch" in section
        assert ("track_running_stats=True" in section) == (spec.preset == "instance")
        assert "**running statistics**: none" in md
        # every path of both backends: Numba small and large, NumPy small, one-chunk and large
        assert md.count("eval: forward\\_eval = training's y") == 5
