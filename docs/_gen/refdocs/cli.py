"""reference/cli.md: each entry point's module docstring and its `--help`, produced in-process by its own
argparse parser (what a user's terminal shows, at a fixed width)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os

from .md import doc

ENTRY_POINTS = ("interventions.run", "analyses.report", "tracking.import_npz", "tracking.server")
WIDTH = "80"   # argparse wraps at $COLUMNS; 80 fits the page
INTRO = """\
# Command-line reference

Generated from the entry points' own parsers: the `--help` of each, as printed.
"""


def help_text(module: str) -> str:
    """`python -m <module> --help`'s output: its main(['--help']) run here, stdout captured."""
    main = importlib.import_module(module).main
    out, old = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(out):
            main(["--help"])
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"{module} --help exited {e.code}") from None
    finally:
        if old is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def page() -> str:
    out = [INTRO]
    for module in ENTRY_POINTS:
        out += [f"## `python -m {module}` {{#{module.replace('.', '-').replace('_', '-')}}}\n",
                doc(importlib.import_module(module)) + "\n", "```text\n" + help_text(module).rstrip() + "\n```\n"]
    return "\n".join(out)
