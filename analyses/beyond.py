"""The designs beyond the paper, one module each, all with the same parts: NAME and TITLE; find(cells) ->
(specs, notes), found from design roles; compute(members, cells, spec) -> a result row; markdown(rows) ->
report.md lines; figure(row, path) -> a PNG path or None. report.py runs every module listed here."""
from __future__ import annotations

from analyses import accelerators, losses, mediator

MODULES = {m.NAME: m for m in (mediator, losses, accelerators)}
