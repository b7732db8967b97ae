"""The reference pages generated from the code at build time (docs/_gen/hooks.py adds them to the site):
uri -> a function returning the page's Markdown. Nothing here is committed as Markdown."""
from __future__ import annotations

from . import cli, plugins, study_file

PAGES = {"reference/study-file.md": study_file.page, "reference/plugins.md": plugins.page,
         "reference/cli.md": cli.page}
