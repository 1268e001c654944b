"""The ``isletfit`` command: a thin layer over the Python API.

Each sub-command has an ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that does the work. Errors of the package's own type are
printed as one line (file, line, field, what was expected) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import IsletfitError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isletfit",
        description="Estimate islet-graft function over time from CGM records.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"isletfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# --- sub-commands -------------------------------------------------------------------------
# Each entry registers one sub-command; keep them in the order they appear in --help.
_SUBCOMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    """Run the ``isletfit`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IsletfitError as err:
        print(f"isletfit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
