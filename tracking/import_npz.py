"""Import the paper's published metrics (one .npz per cell) into MLflow: `paper/<folder>` experiments.

    python -m tracking.import_npz DIR [--tracking-uri URI]

DIR holds design folders (dose/, mediation/, ...) or is one design folder itself. Each folder becomes
experiment `paper/<folder>`: one study run, one arm run per .npz (run name = file stem), one member run per
seed, in the run schema the engine writes (docs/study-files.md, where results go). Importing again creates nothing: arms whose
run is already FINISHED are skipped, a half-imported arm is completed. A file with missing fields,
unexpected shapes or a broken archive is reported by name and skipped; the rest still imports; the exit
status is then 1. Reading the files: tracking.paper_release.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paper_release import PARAM_KEYS, BadFile, read_cell
from .recorder import Recorder
from .credentials import write_refusal
from .store import EXPERIMENT_KIND, StoreError, check_uri, resolve_uri

__all__ = ["PARAM_KEYS", "Summary", "design_folders", "import_dir", "import_folder", "main"]


@dataclass
class Summary:
    experiments: int = 0
    arms: int = 0
    members: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (file, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)


def design_folders(root: Path) -> list[Path]:
    """DIR itself when it holds .npz files, else its subfolders that do."""
    if any(root.glob("*.npz")):
        return [root]
    return sorted(f for f in root.iterdir()
                  if f.is_dir() and not f.name.startswith(".") and any(f.glob("*.npz")))


def import_folder(folder: Path, uri: str, summary: Summary, log=print) -> None:
    design = folder.name
    files = sorted(folder.glob("*.npz"))
    mains = {f.stem: f for f in files if not f.stem.endswith("_weights")}
    weights = {f.stem[: -len("_weights")]: f for f in files if f.stem.endswith("_weights")}
    for stem, f in sorted(weights.items()):
        if stem not in mains:
            summary.skipped.append((str(f), f"no main file {stem}.npz to attach its per-seed times to"))

    rec = Recorder(uri, f"paper/{design}")
    study_tags = {"study": design}
    study_id = rec.find("study", tags=study_tags)
    summary.experiments += 1
    n_arms = n_members = n_already = 0
    for stem, path in sorted(mains.items()):
        tags = {"study": design, "arm": stem}
        arm_id = rec.find("arm", parent_id=study_id, tags=tags) if study_id else None
        if arm_id is not None and rec.status(arm_id) == "FINISHED":
            n_already += 1
            if stem in weights:
                summary.ignored.append((str(weights[stem]), "arm already imported"))
            continue
        try:
            cell = read_cell(path, design, weights.get(stem))
        except BadFile as e:
            summary.skipped.append((str(path), str(e)))
            continue
        if stem in weights and not any(weights[stem].name in n for n in cell.notes):
            summary.ignored.append((str(weights[stem]), "main file has per-seed times"))
        if study_id is None or rec.status(study_id) != "RUNNING":
            study_id = rec.run("study", design, tags=study_tags,
                               description=f"published metrics of arXiv:2606.18465, folder {design}/")
        tags = {**tags, "design_role": cell.params["design_role"]}   # not identity: found again by study/arm
        arm_id = rec.run("arm", stem, parent_id=study_id, params=cell.params, tags=tags,
                         description=cell.description)
        rec.add_runs("member", arm_id, [
            {"name": f"{stem} seed={s}", "params": {**cell.params, "seed": s}, "tags": {**tags, "seed": s},
             "metrics": metrics} for s, metrics in enumerate(cell.members)], status="FINISHED")
        rec.log_curves(arm_id, cell.curves)
        rec.log_summary(arm_id, cell.arm_metrics)
        rec.finish(arm_id)   # last: a FINISHED arm means every member is there
        n_arms += 1
        n_members += len(cell.members)
    if study_id is not None and rec.status(study_id) == "RUNNING":
        rec.finish(study_id)
    rec.close()
    summary.arms += n_arms
    summary.members += n_members
    summary.already += n_already
    log(f"paper/{design}: {n_arms} arms, {n_members} members imported"
        + (f", {n_already} arms already there" if n_already else ""))


def import_dir(root: Path, uri: str | None = None, log=print) -> Summary:
    uri = resolve_uri(uri)
    check_uri(uri)
    summary = Summary()
    folders = design_folders(root)
    if not folders:
        raise FileNotFoundError(f"{root}: no .npz files in it or in its subfolders")
    for folder in folders:   # a server that would refuse a write says so before the first one
        if why := write_refusal(uri, f"paper/{folder.name}", EXPERIMENT_KIND):
            raise StoreError(uri, why)
    for folder in folders:
        import_folder(folder, uri, summary, log)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracking.import_npz", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="paper-metrics folder, or one design folder in it")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db")
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir}: not a folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        s = import_dir(args.dir, args.tracking_uri)
    except (StoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups: dict[tuple[str, str], list[str]] = {}
    for f, why in s.ignored:
        groups.setdefault((str(Path(f).parent), why), []).append(Path(f).name)
    for (folder, why), names in groups.items():
        print(f"ignored {len(names)} file(s) in {folder} ({why}): {', '.join(names)}")
    for f, why in s.skipped:
        print(f"SKIPPED {f}: {why}", file=sys.stderr)
    print(f"{s.experiments} experiments, {s.arms} arms and {s.members} members imported, "
          f"{s.already} arms already there, {len(s.ignored)} files ignored, {len(s.skipped)} skipped "
          f"({time.perf_counter() - t0:.1f} s) into {resolve_uri(args.tracking_uri)}")
    return 1 if s.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
