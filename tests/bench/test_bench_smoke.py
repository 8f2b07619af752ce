"""Each benchmark in bench/ runs in its short --smoke mode and writes its result.

These check that the benchmarks still work (for breakage, not timing): the numbers
themselves are for `docs/performance.md`, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ETCD

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(name: str, out: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"bench.{name} failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["smoke"] is True
    assert result["rows"], "no measurements"
    assert result["command"].endswith(" ".join([f"-m bench.{name} --smoke --out {out}", *extra]))
    assert {"machine", "versions"} <= result.keys()
    return result


def test_scheduler_smoke(tmp_path: Path) -> None:
    result = run_smoke("scheduler", tmp_path)
    assert [row["workers"] for row in result["rows"]] == [10, 100]


def _head() -> str | None:
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return found.stdout.strip() if found.returncode == 0 else None


def test_scale_smoke_beside_floor_and_an_older_manager(tmp_path: Path) -> None:
    """Cube, the floor and HEAD's committed manager (--compare), side by side in one run."""
    head = _head()
    if head is None:
        pytest.skip("not a git checkout: --compare has no commit to measure")
    result = run_smoke("scale", tmp_path, "--compare", "HEAD")
    assert result["settings"]["tasks"] == 200
    rows = {row["system"]: row for row in result["rows"]}
    before = result["compare"]["system"]
    assert before == f"cube @{head[:7]}"
    assert set(rows) == {"cube", "floor", before}
    for system in rows:
        assert rows[system]["all Running (s)"] > 0
        assert rows[system]["workers' CPU (s)"] >= 0
    # The floor has no manager; each manager run has its time over the floor's.
    assert rows["floor"].get("manager CPU (s)") is None
    for system in ("cube", before):
        assert rows[system]["manager CPU (s)"] > 0
        floor_ratio = rows[system]["all Running (s)"] / rows["floor"]["all Running (s)"]
        assert rows[system]["vs floor"] == f"{floor_ratio:.2f}x"
    cpu = rows["cube"]["manager CPU (s)"] / rows[before]["manager CPU (s)"]
    assert rows["cube"][f"manager CPU vs {before}"] == f"{cpu:.2f}x"
    targets = {t["name"] for t in result["targets"]}
    assert {"vs floor", f"manager CPU vs {before}"} <= targets
    # Every task of every run reached Running, by the measures each run recorded.
    runs = result["runs"]
    assert {len(runs[s]) for s in rows} == {1}
    assert all(r["end to end (tasks/s)"] > 0 for s in rows for r in runs[s])


def test_scale_refuses_an_unknown_revision(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.scale", "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(
        [*command, "--compare", "no-such-revision"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: --compare no-such-revision: not a commit of this repository"
    ]
    assert not (tmp_path / "scale.json").exists()


@pytest.mark.docker
def test_containers_smoke(tmp_path: Path) -> None:
    result = run_smoke("containers", tmp_path)
    systems = {row["system"] for row in result["rows"]}
    assert {"cube, 1 worker", "cube, 3 workers"} <= systems


@pytest.mark.docker
def test_healing_smoke_beside_swarm(tmp_path: Path) -> None:
    result = run_smoke("healing", tmp_path)
    killed = [r for r in result["rows"] if r["failure"].startswith("container killed")]
    cube = next(r for r in killed if r["system"] == "cube")
    assert cube["median (s)"] > 0
    failures = [r["failure"] for r in result["rows"]]
    for failure in ("worker killed (SIGKILL)", "worker frozen (SIGSTOP)", "-w worker killed"):
        assert any(f.startswith(failure) for f in failures), failure
    assert len(result["runs"]["false_downs"]) == 1  # counted (the target, 0, is the bench's)
    if not result["swarm"]["measured"]:
        pytest.skip(f"swarm not usable on this engine: {result['swarm']['skipped']}")
    (swarm,) = [r for r in killed if r["system"].startswith("swarm")]
    assert swarm["median (s)"] > 0
    assert cube["vs swarm"] == f"{cube['median (s)'] / swarm['median (s)']:.2f}x"
    assert result["runs"]["swarm_container_killed"] == [swarm["median (s)"]]


@pytest.mark.docker
def test_footprint_smoke(tmp_path: Path) -> None:
    run_smoke("footprint", tmp_path)


@pytest.mark.docker
def test_jobs_smoke_beside_swarm(tmp_path: Path) -> None:
    result = run_smoke("jobs", tmp_path)
    measures = [r["measure"] for r in result["rows"]]
    assert measures == ["4 replicas to running", "rolling update"]
    assert all(r["cube (s)"] > 0 for r in result["rows"])
    if not result["runs"]["swarm"]:
        pytest.skip("swarm not usable on this engine")
    for row in result["rows"]:
        assert row["cube / swarm"] == f"{row['cube (s)'] / row['swarm (s)']:.2f}x"


def _needs_etcd() -> None:
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server")


def test_failover_smoke(tmp_path: Path) -> None:
    """Two leaders SIGKILLed on a 3-member etcd; each round's times are from the kill."""
    _needs_etcd()
    result = run_smoke("failover", tmp_path)
    [row] = result["rows"]
    assert row["lease TTL (s)"] == 2 and row["target (s)"] == 3.0
    rounds = result["rounds"]["2"]
    assert len(rounds) == 2
    for measured in rounds:
        # A new leader elected, then placing, both after the lease could run out.
        assert 0 < measured["elected"] <= measured["placed"]
    assert [t["name"] for t in result["targets"]] == ["failover, TTL 2 s"]


def test_store_smoke_etcd_beside_sqlite(tmp_path: Path) -> None:
    """The same workload on SQLite and on a single-member etcd, with their ratio."""
    _needs_etcd()
    result = run_smoke("store", tmp_path)
    rows = {row["store"]: row for row in result["rows"]}
    assert set(rows) == {"sqlite", "etcd (1 member)"}
    assert rows["sqlite"]["vs sqlite"] == "1.00x"
    etcd = rows["etcd (1 member)"]
    assert etcd["tasks/s"] > 0 and etcd["etcd CPU (s)"] > 0
    assert etcd["vs sqlite"] == f"{etcd['tasks/s'] / rows['sqlite']['tasks/s']:.2f}x"
    assert [t["name"] for t in result["targets"]] == ["etcd (1 member) over sqlite"]
