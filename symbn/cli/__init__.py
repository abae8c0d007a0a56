"""The ``symbn`` command line: ``symbn derive ...``, ``generate``, ``check``, ``docs``, ``list``, ``bench``, ``cache``.

flags.py parses the spec flags and words errors by flag, parser.py builds the parser, commands.py and cache.py run
the commands. Building the parser needs only symbn.core.spec; heavy imports stay inside the commands.
"""

from __future__ import annotations

import os
import sys

from symbn.cli.flags import USAGE_ERRORS, flag_message
from symbn.cli.parser import parser

__all__ = ["main", "parser"]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.run(args)
    except USAGE_ERRORS as err:
        p.exit(2, f"symbn: error: {flag_message(err, args)}\n")
    except (OSError, ImportError) as err:  # files: missing, unwritable, not ours, not Python
        p.exit(1, f"symbn: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        p.exit(130, "symbn: interrupted\n")
    except Exception as err:  # a bug of symbn's: one line, the traceback on request
        if os.environ.get("SYMBN_DEBUG"):
            raise
        p.exit(3, f"symbn: internal error: {type(err).__name__}: {_one_line(err)} (please report it; set "
                  "SYMBN_DEBUG=1 for the traceback)\n")


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split())
