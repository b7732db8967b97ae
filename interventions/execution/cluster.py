"""Cohort jobs on a Ray cluster (`--executor ray`): every job of a wave is one Ray task, all submitted at
once; the driver stays the only writer of MLflow, snapshots and state.json.

A task trains its job with jobs.train and streams the job's events (log rows, checkpoints, fork states,
throttled progress, finally the result) to the driver through a Ray queue (ray.util.queue.Queue, an actor
on the driver's node). The driver handles them exactly as the local executor's, in order, on one thread.
Why the driver writes, not the workers over HTTP: the resume guarantees stay the local ones (curves are
stored before the snapshot that covers them is written), workers need no store credentials, and a SQLite
store works with a cluster too. The cost is one actor call per batch of events (flushed every 0.25 s and
at each checkpoint), which benchmarks/cluster.py measures.

A task whose worker dies (a killed process, a lost node) is retried by Ray (`max_retries`); the retry
resumes from the job's checkpoint in the snapshot folder, which every node must be able to read
(`--snapshot-dir` on a shared file system), re-sends the rows after it (the recorder skips every (key,
step) already stored) and ends with the same results. Ray's own retry of streaming generators replays by
object count, which a resumed job does not reproduce; hence a plain task and a queue.
"""
from __future__ import annotations

import os
import socket
import time
from queue import Empty

from interventions.execution.jobs import CohortJob, Done, Emit, train

FLUSH_S = 0.25       # events batched per actor call
PROGRESS_S = 0.5     # at most one progress event per this many seconds


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached or used (address, resources)."""


def _train_task(job: CohortJob, queue, cpus: int) -> None:
    """A Ray task: train `job`, putting (job id, event) batches on `queue`, the result last."""
    import torch
    torch.set_num_threads(cpus)   # the cohort's worker threads: the CPUs this task was given
    buf: list = []
    last = {"flush": time.monotonic(), "progress": 0.0}

    def flush() -> None:
        if buf:
            queue.put_nowait_batch(list(buf))
            buf.clear()
        last["flush"] = time.monotonic()

    def emit(ev: tuple) -> None:
        now = time.monotonic()
        if ev[0] == "progress":
            if now - last["progress"] < PROGRESS_S:
                return
            last["progress"] = now
        buf.append((job.id, ev))
        if ev[0] in ("checkpoint", "fork", "resumed") or now - last["flush"] >= FLUSH_S:
            flush()

    import ray
    emit(("worker", os.getpid(), ray.util.get_node_ip_address()))
    result = train(job, emit)
    buf.append((job.id, ("result", result)))
    flush()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """ClusterError unless something listens at HOST:PORT (a Ray head's GCS port)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r}: expected 'auto' or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot connect to Ray at {address!r}: {e.strerror or e}") from None


class RayExecutor:
    """Runs a wave's jobs as Ray tasks. address: None starts a local Ray instance on 127.0.0.1 (stopped at
    close), "auto" or HOST:PORT joins a running cluster. cpus: CPUs per task (default: the smallest node's
    CPU count, so one cohort fills a node); device "cuda": one GPU per task; plugins: the studies' plug-in
    sources (study.plugins), shipped to the workers."""

    def __init__(self, address: str | None = None, *, cpus: int | None = None, device: str = "cpu",
                 max_retries: int = 3, log=print, plugins: list[str] = ()):
        try:
            import ray
        except ImportError:
            raise ClusterError("--executor ray needs Ray: pip install -e '.[cluster]'") from None
        self.ray, self.device, self.max_retries, self.log = ray, device, max_retries, log
        self.started = address is None
        if self.started:
            # Ray's own sockets on loopback (else it binds the host's interface address); and workers at
            # the driver's priority: Ray's default niceness 15 made a cohort train 3x slower beside any
            # other busy process (measured here). For `ray start`, docs/cluster.md sets the same.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_worker_niceness", "0")
        if address not in (None, "auto"):
            _reachable(address)   # else ray.init retries an unreachable address for minutes
        t0 = time.perf_counter()
        try:
            # "local": always a new instance, never one recorded in /tmp/ray by an earlier `ray start`
            local = {"include_dashboard": False} if self.started else {}   # start-only settings
            # the studies' plug-ins (files, package folders) go to every worker: Ray's job runtime environment
            env = {"runtime_env": {"py_modules": sorted(set(plugins))}} if plugins else {}
            ray.init(address=address or "local", logging_level="WARNING", **local, **env)
        except Exception as e:   # ConnectionError, timeouts, a bad address
            raise ClusterError(f"cannot connect to Ray at {address!r}: {str(e).strip().splitlines()[0]}") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        per_node = [int(n["Resources"].get("CPU", 0)) for n in nodes]
        self.cpus = cpus or max(1, min(per_node))
        if self.cpus > max(per_node):
            raise ClusterError(f"--cpus-per-task {self.cpus}: no node has that many CPUs ({per_node})")
        if device == "cuda" and not any(n["Resources"].get("GPU") for n in nodes):
            raise ClusterError("--device cuda: no node of the Ray cluster has a GPU")
        self.nodes = len(nodes)
        # tasks at a time; the runner splits a wave's cohort groups into this many jobs (by whole arms)
        self.slots = sum(int(c) // self.cpus for c in per_node) if device == "cpu" else \
            sum(int(n["Resources"].get("GPU", 0)) for n in nodes)
        self._task = ray.remote(_train_task)
        self.queue = None
        self.stats = {"connect_s": time.perf_counter() - t0, "tasks": 0, "start_s": [], "events": 0, "reads": 0}

    def run_all(self, work: list[tuple[CohortJob, Emit]], done: Done) -> None:
        ray, queue = self.ray, self._queue()
        index = {job.id: i for i, (job, _) in enumerate(work)}
        opts = dict(num_cpus=self.cpus, max_retries=self.max_retries)
        if self.device == "cuda":
            opts["num_gpus"] = 1
        t0 = time.perf_counter()
        refs = {i: self._task.options(**opts, name=f"train_cohort:{job.id}").remote(job, queue, self.cpus)
                for i, (job, _) in enumerate(work)}
        self.stats["tasks"] += len(refs)
        try:
            while refs:
                events = self._drain(queue)
                self.stats["reads"] += bool(events)
                self.stats["events"] += len(events)
                for job_id, ev in events:
                    i = index[job_id]
                    if ev[0] == "worker":   # the task has started: worker process, imports, scheduling
                        self.stats["start_s"].append(time.perf_counter() - t0)
                        self.log(f"ray: cohort {job_id} training on {ev[2]} (worker pid {ev[1]})")
                    elif ev[0] == "result":
                        refs.pop(i, None)
                        done(i, ev[1])
                    else:
                        work[i][1](ev)
                ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
                for ref in ready:
                    ray.get(ref)          # re-raises a task's own error (after Ray's retries)
        except BaseException:
            for ref in refs.values():
                ray.cancel(ref, force=True)
            raise

    def _queue(self):
        """The event queue, an actor on the driver's node, made once (an actor is a new process)."""
        if self.queue is None:
            from ray.util.queue import Queue
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            here = NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(), soft=False)
            self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        return self.queue

    @staticmethod
    def _drain(queue) -> list:
        try:
            items = [queue.get(timeout=0.2)]
        except Empty:
            return []
        n = queue.qsize()
        return items + (queue.get_nowait_batch(n) if n else [])

    def summary(self) -> str:
        st = self.stats
        starts = sorted(st["start_s"])
        mid = f"{starts[len(starts) // 2]:.1f} s" if starts else "-"
        return (f"ray: {st['tasks']} cohort tasks on {self.nodes} node(s), {self.slots} at a time with "
                f"{self.cpus} CPU(s) each; connect {st['connect_s']:.1f} s; a task started (median) {mid} "
                f"after its wave was submitted; {st['events']} events in {st['reads']} queue reads")

    def close(self) -> None:
        if self.stats["tasks"]:
            self.log(self.summary())
        if self.ray.is_initialized():
            if self.queue is not None:
                self.ray.kill(self.queue.actor)
            self.ray.shutdown()
