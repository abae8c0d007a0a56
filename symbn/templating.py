"""The one Jinja2 environment every generated file comes from."""

from __future__ import annotations

import functools
from pathlib import Path



def templates_dir() -> Path:
    """templates/ beside the package in a source checkout; symbn/templates inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "kernels" / "module.py.j2").is_file():
            return candidate
    raise FileNotFoundError(f"symbn templates not found next to {here}")


@functools.lru_cache(maxsize=None)
def environment():
    import jinja2  # here: symbn.load of a cached module reads template text for its hash but renders nothing

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(name: str, context: dict) -> str:
    return environment().get_template(name).render(**context)


def template_source(name: str) -> str:
    return (templates_dir() / name).read_text()
