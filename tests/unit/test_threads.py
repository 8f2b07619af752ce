"""The runtime's thread pool: a ThreadPoolExecutor that never holds up exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

from cube.runtime.threads import DaemonThreadPool


def test_results_and_errors_come_back_through_the_futures() -> None:
    pool = DaemonThreadPool(2)
    try:
        assert pool.submit(pow, 2, 10).result(5) == 1024
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        assert sorted(pool.map(abs, [-3, 1, -2], timeout=5)) == [1, 2, 3]
    finally:
        pool.shutdown()


def test_threads_are_bounded_daemons_and_reused() -> None:
    pool = DaemonThreadPool(2, "bounded")
    gate = threading.Event()
    try:
        busy = [pool.submit(gate.wait, 5) for _ in range(4)]  # two wait for a thread
        assert sum(f.running() for f in busy) <= 2
        gate.set()
        assert all(f.result(5) for f in busy)
        assert all(f.result(5) == 1 for f in [pool.submit(len, "x") for _ in range(10)])
        assert len(pool._threads) == 2
        assert all(t.daemon and t.name.startswith("bounded-") for t in pool._threads)
    finally:
        pool.shutdown()


def test_shutdown_refuses_new_work_and_can_cancel_queued_work() -> None:
    pool = DaemonThreadPool(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(len, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(len, "late")
    gate.set()
    assert running.result(5) is True


def test_asyncio_runs_blocking_calls_on_it() -> None:
    pool = DaemonThreadPool(1)

    async def call() -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, sum, [1, 2, 3])

    try:
        assert asyncio.run(call()) == 6
    finally:
        pool.shutdown()


def test_a_call_that_never_returns_does_not_hold_up_exit() -> None:
    """What a pull in progress is to a stopping worker; a ThreadPoolExecutor hangs here."""
    script = textwrap.dedent(
        """
        import threading
        from cube.runtime.threads import DaemonThreadPool

        pool = DaemonThreadPool(1)
        started = threading.Event()
        pool.submit(lambda: (started.set(), threading.Event().wait()))
        started.wait(10)
        pool.shutdown(wait=False)
        print("leaving", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0 and done.stdout == "leaving\n", done.stderr
