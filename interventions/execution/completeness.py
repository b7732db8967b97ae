"""The store against state.json: what a study's runs must hold (expected), writing again what an earlier
run finished but the store lacks (repair), and refusing to call a study finished that the store does not
hold whole (verify). Run on the runner's worker thread, in program order with its other writes."""
from __future__ import annotations

from interventions.execution.summary import member_summary
from interventions.vocab import MemberKey


class StoreIncomplete(RuntimeError):
    """The store lacks runs, statuses, summaries or curve points that the study reports."""


def expected(runner, names: list[str], study: bool = False) -> list[dict]:
    """What the store must hold of the finished arms `names` (and the study run): tracking.audit's form."""
    out = []
    for name in names:
        arm = runner.state["arms"].get(name, {})
        if arm.get("status") != "done":
            continue
        out.append({"role": "arm", "arm": name, "seed": None, "metrics": arm["summary"]})
        for r in arm["results"]:
            out.append({"role": "member", "arm": name, "seed": r["seed"],
                        "metrics": member_summary(r),
                        "last_step": r.get("last_logged")})   # its last curve row (a trunk's fork step unlogged)
    if study:
        done = sum(a["status"] == "done" for a in runner.state["arms"].values())
        out.append({"role": "study", "arm": None, "seed": None, "metrics": {"n_arms_done": done}})
    return out

def repair(runner) -> None:
    """On the worker thread: arms that earlier runs finished but the store lacks (a write lost, a run
    deleted) are written again from state.json, each said in one line."""
    names = [n for n in runner.g.order if n in runner.done_before]
    lacks = runner.tracker.check(expected(runner, names)) if names else []
    for name in names:
        what = [line for arm, line in lacks if arm == name]
        if not what:
            continue
        runner.log(f"repairing arm {name} in the store ({len(what)} runs; {what[0]}"
                 + (f"; {len(what) - 1} more" if len(what) > 1 else "") + ")")
        arm = runner.state["arms"][name]
        results = [{**r, "key": MemberKey(name, r["seed"])} for r in arm["results"]]
        runner.tracker.repair_arm(name, arm["params"], runner._description(name, arm["params"]),
                                list(runner.g.arms[name].seeds), runner._datasets(name), results, arm["summary"],
                                runner.study.resolved_yaml())

def verify(runner, expected: list[dict]) -> None:
    """On the worker thread: StoreIncomplete unless the store holds everything the study reports."""
    what = [line for _, line in runner.tracker.check(expected)]
    if what:
        raise StoreIncomplete(f"the store lacks what the study reported for {len(what)} runs ({what[0]}"
                              + (f"; {len(what) - 1} more" if len(what) > 1 else "")
                              + "); run the same command again to complete it")
