"""How often the manager asks each worker's stream for stats (Tracker.stats_period)."""

from __future__ import annotations

import pytest

from cube.clock import ManualClock
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.scheduler import Epvm

pytestmark = pytest.mark.anyio


def _manager(workers: int, **settings: float) -> Manager:
    addresses = [f"127.0.0.1:{20000 + i}" for i in range(workers)]
    return Manager(addresses, Epvm(), MemoryBackend(), Settings(**settings), clock=ManualClock())


@pytest.mark.parametrize(
    ("workers", "settings", "period"),
    [
        (10, {}, 2.0),  # a small cluster: --stats-interval
        (1000, {}, 5.0),  # 1,000 workers at 200 stats a second at most
        (400, {}, 2.0),  # exactly 200 a second at 2 s
        (5000, {}, 5.0),  # 25 s would leave a quiet worker silent past the timeout
        (5000, {"worker_timeout": 60.0}, 25.0),
        (1000, {"stats_interval": 8.0}, 8.0),  # a longer interval asked for is kept
    ],
)
async def test_stream_stats_period(workers: int, settings: dict[str, float], period: float) -> None:
    manager = _manager(workers, **settings)
    try:
        assert manager.tracker.stats_period == pytest.approx(period)
    finally:
        await manager.close()
