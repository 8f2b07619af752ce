"""Footprint: resident memory of an idle worker and an idle manager.

A worker and a manager are started as users start them (``cube worker``,
``cube manager``, default settings); once the manager sees the worker ready, their RSS
is sampled for a few seconds and the largest value kept. Then 10 tasks are run and the
worker measured again, to show what tasks add.

    .venv/bin/python -m bench.footprint
    .venv/bin/python -m bench.footprint --smoke
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from bench.common import Cluster, Proc, Result, Target, main, task_event, wait_for, workdir
from bench.containers import remove_labelled

IMAGE = "cube/busybox:latest"
RUNNING = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=10.0, help="seconds of sampling")
    parser.add_argument("--tasks", type=int, default=10)


def sample_rss(proc: Proc, window: float) -> float:
    """The largest RSS seen over ``window`` seconds (a measurement window, not a wait)."""
    peak = 0.0
    end = time.monotonic() + window
    while True:
        peak = max(peak, proc.rss_mb())
        if time.monotonic() >= end:
            return peak
        time.sleep(0.25)


def run(args: argparse.Namespace) -> Result:
    window = 2.0 if args.smoke else args.window
    tasks = 2 if args.smoke else args.tasks
    name = f"footprint-{uuid.uuid4().hex[:6]}"
    with workdir("footprint") as tmp:
        cluster = Cluster(tmp)
        try:
            cluster.start_worker(name)
            cluster.wait_workers()
            cluster.start_manager()
            cluster.wait_manager(1)
            worker, _ = cluster.workers[0]
            assert cluster.manager is not None
            worker_idle = sample_rss(worker, window)
            manager_idle = sample_rss(cluster.manager, window)
            ids = []
            for _ in range(tasks):
                body = task_event(IMAGE, ["sleep", "3600"])
                httpx.post(f"{cluster.manager_url}/tasks", json=body, timeout=10)
                ids.append(body["Task"]["ID"])

            def running() -> bool:
                states = [
                    httpx.get(f"{cluster.manager_url}/tasks/{i}", timeout=10).json()["State"]
                    for i in ids
                ]
                return all(s == RUNNING for s in states)

            wait_for(running, 120, f"{tasks} tasks Running", interval=0.1)
            worker_busy = sample_rss(worker, window)
            manager_busy = sample_rss(cluster.manager, window)
        finally:
            cluster.stop()
            remove_labelled(f"cube.worker={name}")
    rows = [
        {"process": "worker, idle", "RSS (MB)": worker_idle},
        {"process": f"worker, {tasks} tasks running", "RSS (MB)": worker_busy},
        {"process": "manager, idle (1 worker)", "RSS (MB)": manager_idle},
        {"process": f"manager, {tasks} tasks running", "RSS (MB)": manager_busy},
    ]
    return Result(
        name="footprint",
        title="Footprint: resident memory (largest sample over the window)",
        columns=["process", "RSS (MB)"],
        rows=rows,
        targets=[Target("idle worker", "<= 60 MB RSS", f"{worker_idle:.1f} MB", worker_idle <= 60)],
        settings={"window_s": window, "tasks": tasks, "flags": "defaults"},
        notes=["RSS from /proc/<pid>/status (VmRSS), in MiB."],
    )


if __name__ == "__main__":
    main("footprint", run, configure, __doc__ or "")
