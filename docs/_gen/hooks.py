"""MkDocs hook (mkdocs.yml `hooks:`): adds the reference pages generated from the code (refdocs.PAGES) to the
site at build time, so that they cannot drift from it; none of them is a file in docs/."""
from __future__ import annotations

import refdocs   # beside this file: MkDocs puts the hook's folder on sys.path while it loads it
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    for uri, make in refdocs.PAGES.items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"docs/{uri} is generated at build time (docs/_gen/refdocs): delete that file")
        files.append(File.generated(config, uri, content=make()))
    return files
