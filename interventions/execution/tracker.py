"""The MLflow side of a study run: study -> arm -> member runs, curves, summaries, artifacts.

`Tracker` does it with a Recorder (tracking.recorder), or a NullRecorder when tracking is off; a study
runs it in a child process (tracking_process.py), so that MLflow's work never delays training.
"""
from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path

from interventions.execution.summary import dense_curves_csv, dense_curves_table, member_summary, seed_mean_curves
from interventions.vocab import MemberKey


class NullRecorder:
    """Recorder stand-in when tracking is off (benchmarks, tests): accepts every call, keeps nothing."""

    def __init__(self, *_, **__):
        self._n = 0

    def run(self, role: str, name: str, **_) -> str:
        self._n += 1
        return f"null-{self._n}"

    def add_runs(self, role: str, parent_id, runs: list, **_) -> list[str]:
        return [self.run(role, r["name"]) for r in runs]

    def log_curves(self, *_, **__): pass
    def log_summary(self, *_, **__): pass
    def log_artifact(self, *_, **__): pass
    def log_text(self, *_, **__): pass
    def log_dataset(self, *_, **__): pass
    def log_table(self, *_, **__): pass
    def flush(self): pass
    def finish(self, *_, **__): pass
    def close(self): pass


def provenance(kernels_path: str | None = None) -> dict[str, str]:
    """Tags of the study run: the project's git commit, branch and dirty flag (MLflow's mlflow.source.*
    tags, where the UI shows them; dirty: tracked files changed), the package version, the compiled
    kernels' file, the host."""
    from importlib.metadata import PackageNotFoundError, version
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    try:
        pkg = version("grokking-interventions")
    except PackageNotFoundError:
        pkg = "not installed"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "interventions.run", "package_version": pkg,
            "host": socket.gethostname()}
    commit = git("rev-parse", "HEAD")
    if commit:   # a git checkout (not an installed copy)
        tags.update({"mlflow.source.git.commit": commit,
                     "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD") or "",
                     "git_dirty": "true" if git("status", "--porcelain", "--untracked-files=no") else "false"})
    if kernels_path:
        tags["kernels_path"] = kernels_path
    return tags


def plugin_tags(info: list[dict]) -> dict[str, str]:
    """Provenance of the study's plug-ins (study.plugins.describe): plugin.<module>.{version,digest,file}."""
    return {f"plugin.{p['name']}.{k}": p[k] for p in info for k in ("version", "digest", "file")}


class Tracker:
    def __init__(self, rec, study: str):
        self.rec, self.study = rec, study
        self.study_run: str | None = None
        self.arm_runs: dict[str, str] = {}
        self.member_runs: dict[MemberKey, str] = {}
        self.open_runs: list[str] = []

    def _tags(self, arm: str | None = None, seed: int | None = None, design_role: str | None = None) -> dict:
        return {"study": self.study, **({"arm": arm} if arm is not None else {}),
                **({"seed": seed} if seed is not None else {}),
                **({"design_role": design_role} if design_role else {})}

    def open_study(self, description: str | None, params: dict, yaml_text: str, picture: dict | None, forks: dict,
                   provenance: dict | None = None) -> None:
        self.study_run = self.rec.run("study", self.study, tags={**self._tags(), **(provenance or {})},
                                      description=description, params=params)
        self.rec.log_text(self.study_run, yaml_text, "study.yaml")
        if picture is not None and not isinstance(self.rec, NullRecorder):
            from interventions.study.views import draw_graph
            with tempfile.TemporaryDirectory() as tmp:
                draw_graph(picture, Path(tmp) / "graph.png", forks)
                self.rec.log_artifact(self.study_run, str(Path(tmp) / "graph.png"))

    def open_arm(self, name: str, params: dict, description: str, seeds: list[int],
                 datasets: dict | None = None, tags: dict | None = None) -> None:
        """datasets: {seed or None (the arm): plan.dataset(...)}, logged as each run's dataset input; tags: more
        tags of the arm and its members (`kernels`: the path that trains them)."""
        role, datasets, extra = params.get("design_role"), datasets or {}, tags or {}
        rid = self.rec.run("arm", name, parent_id=self.study_run, params=params,
                           tags={**self._tags(name, None, role), **extra}, description=description)
        self.arm_runs[name] = rid
        self.open_runs.append(rid)
        if None in datasets:
            self.rec.log_dataset(rid, **datasets[None])
        members = [{"name": f"{name} seed={seed}", "params": {**params, "seed": seed},
                    "tags": {**self._tags(name, seed, role), **extra}, "description": f"{description}; seed {seed}",
                    "datasets": [datasets[seed]] if seed in datasets else []} for seed in seeds]
        for seed, mid in zip(seeds, self.rec.add_runs("member", rid, members)):   # one transaction
            self.member_runs[MemberKey(name, seed)] = mid
            self.open_runs.append(mid)

    def log_rows(self, step: int, rows: dict) -> None:
        for key, row in rows.items():
            self.rec.log_curves(self.member_runs[key], {k: [(step, v)] for k, v in row.items()})

    def finish_arm(self, name: str, results: list[dict], curves: dict, summary: dict, yaml_text: str) -> None:
        """summary: summary.arm_summary(results, curves), the one the scheduler derives levers from."""
        members = [self.member_runs[r["key"]] for r in results]
        for mid, r in zip(members, results):
            self.rec.log_summary(mid, member_summary(r))
        rid = self.arm_runs[name]
        self.rec.log_curves(rid, seed_mean_curves(curves.values()))
        self.rec.log_summary(rid, summary)
        self.rec.log_text(rid, yaml_text, "study.yaml")
        self.rec.log_text(rid, dense_curves_csv(name, curves), "curves.csv")
        self.rec.log_table(rid, dense_curves_table(name, curves), "curves.json")
        self.rec.finish([*members, rid])   # the arm and its members end together (one transaction)
        done = {rid, *members}
        self.open_runs = [r for r in self.open_runs if r not in done]

    def log_member_file(self, key: MemberKey, path: str, folder: str) -> None:
        self.rec.log_artifact(self.member_runs[key], path, folder)

    def log_study_file(self, path: str, folder: str) -> None:
        self.rec.log_artifact(self.study_run, path, folder)

    def finish_study(self, table: str, n_done: int) -> None:
        self.rec.log_text(self.study_run, table, "arm_table.txt")
        self.rec.log_summary(self.study_run, {"n_arms_done": n_done})
        self.rec.finish(self.study_run)

    def repair_arm(self, name: str, params: dict, description: str, seeds: list[int], datasets: dict,
                   results: list[dict], summary: dict, yaml_text: str) -> None:
        """Write a finished arm again from what state.json kept (its params, member results and summary), its
        curves read back from the member runs: runs missing from the store are made, the others reopened,
        then everything is logged and ended as finish_arm does (what is stored already is not written twice)."""
        self.open_arm(name, params, description, seeds, datasets)
        ids = {r["key"]: self.member_runs[r["key"]] for r in results}
        skip = {k for r in results for k in member_summary(r)}
        stored = self.rec.curves(list(ids.values()), skip)
        self.finish_arm(name, results, {key: stored[rid] for key, rid in ids.items()}, summary, yaml_text)

    def check(self, expected: list[dict]) -> list[tuple[str | None, str]]:
        """What the store lacks of `expected` (tracking.audit), read back after writing every buffer."""
        if isinstance(self.rec, NullRecorder):
            return []
        from tracking.audit import missing
        self.rec.flush()
        return missing(self.rec.client, self.rec.experiment_id, self.study, expected)

    def sync(self) -> None:
        self.rec.flush()

    def abort(self, status: str = "KILLED") -> None:
        """Close the runs still open (after an exception or Ctrl-C); a resumed run reopens them."""
        for rid in self.open_runs + ([self.study_run] if self.study_run else []):
            try:
                self.rec.finish(rid, status)
            except Exception:
                pass
        self.open_runs = []

    def close(self) -> None:
        self.rec.close()
