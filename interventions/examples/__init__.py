"""Examples a user runs and edits: annotated_study.yaml (docs/tutorial.md), plugin_study.yaml with the plug-ins
it names, my_plugins.py (docs/extending.md). They ship inside the package; `python -m interventions.examples
[FOLDER]` copies them into FOLDER (default ./examples), where a study file finds its plug-in module beside it.
(The checkout's top-level examples/ is a link to this folder.)"""
from __future__ import annotations

import shutil
from pathlib import Path

FILES = ("annotated_study.yaml", "plugin_study.yaml", "my_plugins.py")


def copy_to(folder: str | Path = "examples") -> list[Path]:
    """Copy the example files into `folder` (created); an existing file of the same name is left as it is
    (it may hold the user's edits). Returns the files copied."""
    folder, here, copied = Path(folder), Path(__file__).parent, []
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (folder / name).exists():
            shutil.copyfile(here / name, folder / name)
            copied.append(folder / name)
    return copied
