"""Progress on stderr for the commands that take a while (symbn docs, check, derive --prove and --format, generate
--catalog, bench), drawn by tqdm.

Nothing is drawn, and tqdm is not even imported, when stderr is not a terminal (a pipe, a CI log, a test capturing
it) or with --quiet: then ``progress`` hands back the iterable itself, ``steps`` an object whose methods do nothing,
and ``echo`` is print. Bars are left off the screen when they finish (leave=False), so what a command prints is all
that stays.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def enabled(quiet: bool = False) -> bool:
    """Whether to draw: not *quiet*, and stderr is a terminal."""
    if quiet:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _bar(**options):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **options)


def progress(iterable: Iterable, total: int | None = None, desc: str | None = None, quiet: bool = False,
             unit: str = "it") -> Iterable:
    """*iterable*, with a bar on stderr that advances as it is consumed (*iterable* itself when not enabled)."""
    if not enabled(quiet):
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            pass
    return _bar(iterable=iterable, total=total, desc=desc, unit=unit)


class Steps:
    """A bar for work that reports itself through a callback (proofs in worker processes, benchmark cases): advance
    after each piece, show what runs now. Without a bar (not enabled), every method does nothing."""

    def __init__(self, total: int | None, desc: str | None = None, quiet: bool = False, unit: str = "step"):
        self.total, self.count = total, 0
        self._bar = _bar(total=total, desc=desc, unit=unit) if enabled(quiet) else None

    def advance(self, what: str | None = None, n: int = 1) -> None:
        """*n* more pieces done; *what* (e.g. "proved batch_nc, M=3") is shown after the bar."""
        self.count += n
        if self._bar is not None:
            if what:
                self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(n)

    def show(self, what: str) -> None:
        """What runs now, without advancing."""
        if self._bar is not None:
            self._bar.set_postfix_str(what)

    @property
    def done(self) -> bool:
        return self.total is not None and self.count >= self.total

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def steps(total: int | None, desc: str | None = None, quiet: bool = False, unit: str = "step") -> Steps:
    return Steps(total, desc, quiet, unit)


def echo(text: str = "", file=None) -> None:
    """print(text), to stdout unless *file*, clearing any bar first and drawing it again after, so that lines a
    command prints while a bar runs are not broken by it."""
    tqdm = sys.modules.get("tqdm")  # imported only where a bar was drawn
    if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
        tqdm.tqdm.write(text, file=file if file is not None else sys.stdout)
    else:
        print(text, file=file)
