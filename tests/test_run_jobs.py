"""Cohort jobs are plain data: what an executor receives pickles, and what a job reports back (events,
results) is plain data too, so a job can run in another process and give the same results."""
import pickle

from interventions.execution import plan
from interventions.study.derive import levers as lever
from interventions.study.graph import build_graph
from interventions.execution.jobs import LocalExecutor, train
from interventions.study.spec import load_study
from interventions.vocab import MemberKey


def trunk_job(tmp_path):
    graph = build_graph(load_study("fork_study", "smoke"))
    levers = {"trunk": lever(graph, "trunk", {}, None)}
    return graph, plan.cohort_job(graph, ["trunk"], levers, {}, tmp_path, "cpu")


def test_a_cohort_job_pickles_and_names_its_members_and_pauses_as_data(tmp_path):
    graph, job = trunk_job(tmp_path)
    back = pickle.loads(pickle.dumps(job))
    assert back == job
    assert [m.key for m in job.members] == [MemberKey("trunk", s) for s in graph.arms["trunk"].seeds]
    assert [p.fork.name for p in job.pauses] == ["trunk@" + str(graph.arms["free"].fork_at) + "m"]
    assert job.stop_after_pauses and job.fork_file is None


def test_a_job_reports_only_plain_data_and_a_pickled_job_trains_the_same(tmp_path):
    _, job = trunk_job(tmp_path)
    events = []
    here = LocalExecutor().run(job, lambda ev: events.append(pickle.dumps(ev)))
    kinds = {pickle.loads(e)[0] for e in events}
    assert {"log", "fork", "progress"} <= kinds
    there = train(pickle.loads(pickle.dumps(job)), lambda ev: None)
    assert pickle.loads(pickle.dumps(here)) == here == there
    fork = next(pickle.loads(e) for e in events if pickle.loads(e)[0] == "fork")
    assert sorted(fork[3]) == sorted(m.key.seed for m in job.members)   # member states by seed


def test_a_group_splits_into_jobs_of_whole_arms_with_balanced_members():
    """For an executor that runs jobs side by side (a Ray cluster): every arm in exactly one part, arms
    kept whole (retirement groups are arms), member counts as even as whole arms allow."""
    graph = build_graph(load_study("mediation"))
    group = ["base", "up", "up_tau1.15", "up_tau1.3", "up_tau1.5", "up_tau1.7"]
    assert plan.split_group(graph, group, 1) == [group]
    parts = plan.split_group(graph, group, 4)
    assert sorted(a for p in parts for a in p) == sorted(group) and len(parts) == 4
    sizes = [sum(len(graph.arms[a].seeds) for a in p) for p in parts]
    assert max(sizes) - min(sizes) <= len(graph.arms["base"].seeds)
    assert all(p == sorted(p, key=group.index) for p in parts)      # the group's own order inside a part
    assert plan.split_group(graph, ["ctrl"], 8) == [["ctrl"]]
