"""The stats wire shape must stay the book's, and CPU usage must describe the last interval."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cube.stats import (
    CpuStats,
    DiskStats,
    LoadStats,
    MemStats,
    Stats,
    StatsSampler,
    cpu_percent,
    parse_cpu_stat,
    parse_loadavg,
    parse_meminfo,
)

MEMINFO = """\
MemTotal:       32488372 kB
MemFree:        21697264 kB
MemAvailable:   25975132 kB
Buffers:          512724 kB
Cached:          5829084 kB
SwapCached:            0 kB
Active:          1978056 kB
Inactive:        6165696 kB
Active(anon):      18368 kB
Inactive(anon):  3766080 kB
Active(file):    1959688 kB
Inactive(file):  2399616 kB
Unevictable:       13324 kB
Mlocked:           12420 kB
SwapTotal:       8388604 kB
SwapFree:        8388604 kB
Zswap:                 0 kB
Dirty:               196 kB
Writeback:            12 kB
AnonPages:         59724 kB
SReclaimable:      78632 kB
SUnreclaim:        24388 kB
NFS_Unstable:          0 kB
Committed_AS:     364044 kB
VmallocTotal:   34359738367 kB
HugePages_Total:       4
Hugepagesize:       2048 kB
DirectMap4k:       28672 kB
DirectMap2M:     2068480 kB
DirectMap1G:    25165824 kB
"""

PROC_STAT = """\
cpu  724661 181 374910 105390121 4468 59434 23083 7 3 1
cpu0 59580 33 29642 8786508 191 3560 2244 0 0 0
cpu1 60502 3 31300 8779359 150 9016 2729 0 0 0
intr 1234567 0 0 0
ctxt 98765432
btime 1640000000
processes 865995
procs_running 2
procs_blocked 0
"""

LOADAVG = "0.43 0.32 0.33 1/2462 865995\n"

BOOK_EXAMPLE = """\
{
 "MemStats": {"mem_total": 32488372, "mem_free": 14399056, "mem_available": 23306576},
 "DiskStats": {"all": 1006660349952, "used": 39346565120, "free": 967313784832,
               "freeInodes": 61645909},
 "CpuStats": {"id": "cpu", "user": 4819423, "nice": 701, "system": 2140212,
              "idle": 502094668, "iowait": 14448, "irq": 561115, "softirq": 178454,
              "steal": 0, "guest": 0, "guest_nice": 0},
 "LoadStats": {"last1min": 0.78, "last5min": 0.55, "last15min": 0.43,
               "process_running": 2, "process_total": 2336, "last_pid": 581117},
 "TaskCount": 0
}
"""


def test_parse_meminfo_reads_kb_values_under_goprocinfo_names() -> None:
    mem = parse_meminfo(MEMINFO)
    assert mem.mem_total == 32488372
    assert mem.mem_free == 21697264
    assert mem.mem_available == 25975132
    assert mem.active_anon == 18368
    assert mem.inactive_file == 2399616
    assert mem.swap_total == 8388604
    assert mem.writeback == 12
    assert mem.s_unreclaim == 24388
    assert mem.committed_as == 364044
    assert mem.vmalloc_total == 34359738367
    assert mem.huge_pages_total == 4  # a count, no unit on the line
    assert mem.direct_map_2m == 2068480
    assert mem.direct_map_1g == 25165824
    assert mem.mlocked == 12420
    assert mem.page_tables == 0  # absent from the text: zero, not an error


def test_parse_meminfo_rejects_other_text() -> None:
    with pytest.raises(ValueError):
        parse_meminfo("hello: world\n")


def test_parse_cpu_stat_takes_the_aggregate_line() -> None:
    cpu = parse_cpu_stat(PROC_STAT)
    assert cpu == CpuStats(
        user=724661,
        nice=181,
        system=374910,
        idle=105390121,
        iowait=4468,
        irq=59434,
        softirq=23083,
        steal=7,
        guest=3,
        guest_nice=1,
    )
    assert cpu.id == "cpu"


def test_parse_cpu_stat_accepts_old_kernels_with_fewer_columns() -> None:
    cpu = parse_cpu_stat("cpu  10 20 30 40\n")
    assert (cpu.user, cpu.nice, cpu.system, cpu.idle) == (10, 20, 30, 40)
    assert cpu.iowait == cpu.steal == cpu.guest_nice == 0


def test_parse_cpu_stat_rejects_text_without_cpu_line() -> None:
    with pytest.raises(ValueError):
        parse_cpu_stat("cpu0 1 2 3 4\nintr 5\n")


def test_parse_loadavg() -> None:
    assert parse_loadavg(LOADAVG) == LoadStats(
        last1min=0.43,
        last5min=0.32,
        last15min=0.33,
        process_running=1,
        process_total=2462,
        last_pid=865995,
    )


@pytest.mark.parametrize("text", ["", "0.1 0.2", "0.1 0.2 0.3 12 99", "a b c 1/2 3"])
def test_parse_loadavg_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_loadavg(text)


def test_cpu_percent_over_the_delta_not_since_boot() -> None:
    prev = CpuStats(user=1000, system=500, idle=8000, iowait=500)
    # +60 busy (user 30, nice 10, system 10, irq 5, softirq 3, steal 2)
    # +40 idle (idle 30, iowait 10); guest is inside user already and is ignored.
    cur = CpuStats(
        user=1030,
        nice=10,
        system=510,
        idle=8030,
        iowait=510,
        irq=5,
        softirq=3,
        steal=2,
        guest=999,
        guest_nice=999,
    )
    assert cpu_percent(prev, cur) == pytest.approx(60.0)
    # Since boot the same machine would look only 15% busy.
    assert cpu_percent(CpuStats(), prev) == pytest.approx(15.0)


def test_cpu_percent_fully_busy_and_fully_idle() -> None:
    base = CpuStats(user=100, idle=100)
    assert cpu_percent(base, CpuStats(user=200, idle=100)) == 100.0
    assert cpu_percent(base, CpuStats(user=100, idle=300)) == 0.0


def test_cpu_percent_is_zero_when_no_time_passed() -> None:
    cpu = parse_cpu_stat(PROC_STAT)
    assert cpu_percent(cpu, cpu) == 0.0
    assert cpu_percent(CpuStats(), CpuStats()) == 0.0


def test_cpu_percent_ignores_a_counter_stepping_backwards() -> None:
    prev = CpuStats(user=100, idle=100, iowait=50)
    cur = CpuStats(user=150, idle=150, iowait=10)
    assert cpu_percent(prev, cur) == pytest.approx(50.0)


_counter = st.integers(min_value=0, max_value=2**63)
_counters = st.lists(_counter, min_size=10, max_size=10)
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest")


def _cpu(values: list[int]) -> CpuStats:
    return CpuStats.model_validate(dict(zip((*_FIELDS, "guest_nice"), values, strict=True)))


@given(start=_counters, gains=_counters)
def test_cpu_percent_stays_in_range_for_monotonic_counters(
    start: list[int], gains: list[int]
) -> None:
    prev = _cpu(start)
    cur = _cpu([a + b for a, b in zip(start, gains, strict=True)])
    assert 0.0 <= cpu_percent(prev, cur) <= 100.0


@given(a=_counters, b=_counters)
def test_cpu_percent_stays_in_range_for_any_counters(a: list[int], b: list[int]) -> None:
    assert 0.0 <= cpu_percent(_cpu(a), _cpu(b)) <= 100.0


def _stats() -> Stats:
    return Stats(
        mem_stats=parse_meminfo(MEMINFO),
        disk_stats=DiskStats(all=1000, used=400, free=600, free_inodes=7),
        cpu_stats=parse_cpu_stat(PROC_STAT),
        load_stats=parse_loadavg(LOADAVG),
        task_count=3,
        cores=12,
        cpu_percent=12.5,
    )


def test_json_uses_the_book_keys_and_round_trips() -> None:
    stats = _stats()
    wire = json.loads(stats.model_dump_json())
    assert set(wire) == {
        "MemStats",
        "DiskStats",
        "CpuStats",
        "LoadStats",
        "TaskCount",
        "Cores",
        "CpuPercent",
    }
    assert {"mem_total", "mem_free", "mem_available", "write_back", "direct_map_2M"} <= set(
        wire["MemStats"]
    )
    assert wire["MemStats"]["mem_total"] == 32488372
    assert wire["DiskStats"] == {"all": 1000, "used": 400, "free": 600, "freeInodes": 7}
    assert set(wire["CpuStats"]) == {
        "id",
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guest_nice",
    }
    assert set(wire["LoadStats"]) == {
        "last1min",
        "last5min",
        "last15min",
        "process_running",
        "process_total",
        "last_pid",
    }
    assert (wire["TaskCount"], wire["Cores"], wire["CpuPercent"]) == (3, 12, 12.5)
    assert Stats.model_validate_json(stats.model_dump_json()) == stats
    assert Stats.model_validate(stats.model_dump()) == stats


def test_the_books_example_parses() -> None:
    stats = Stats.model_validate_json(BOOK_EXAMPLE)
    assert stats.mem_total_kb == 32488372
    assert stats.disk_stats.free_inodes == 61645909
    assert stats.cpu_stats.softirq == 178454
    assert stats.load_stats.last_pid == 581117
    assert (stats.cores, stats.cpu_percent) == (0, 0.0)  # fields the book did not have


def test_cpu_percent_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        Stats.model_validate({"CpuPercent": 101})


def test_helpers_the_scheduler_uses() -> None:
    stats = _stats()
    assert stats.mem_total_kb == 32488372
    assert stats.mem_available_kb == 25975132
    assert stats.mem_used_kb == 32488372 - 25975132
    assert stats.mem_used_percent == pytest.approx(100 * 6513240 / 32488372)
    assert (stats.disk_total, stats.disk_used, stats.disk_free) == (1000, 400, 600)
    assert Stats().mem_used_percent == 0.0


def _fake_proc(root: Path, stat: str) -> None:
    root.mkdir(exist_ok=True)
    (root / "meminfo").write_text(MEMINFO)
    (root / "stat").write_text(stat)
    (root / "loadavg").write_text(LOADAVG)


def test_sampler_measures_cpu_between_samples(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, "cpu  100 0 0 300 0 0 0 0 0 0\n")
    tasks = [1, 2]
    sampler = StatsSampler(task_count=lambda: len(tasks), proc_root=str(proc), disk_path="/")

    first = sampler.sample()
    assert first.cpu_percent == pytest.approx(25.0)  # no earlier sample: since boot
    assert first.mem_total_kb == 32488372
    assert first.load_stats.process_total == 2462
    assert first.task_count == 2
    assert first.cores >= 1
    assert first.disk_total > 0

    (proc / "stat").write_text("cpu  190 0 0 310 0 0 0 0 0 0\n")
    assert sampler.sample().cpu_percent == pytest.approx(90.0)

    # No jiffies elapsed: keep the last figure instead of claiming the CPU is idle.
    assert sampler.sample().cpu_percent == pytest.approx(90.0)
    (proc / "stat").write_text("cpu  190 0 0 410 0 0 0 0 0 0\n")
    assert sampler.sample().cpu_percent == 0.0

    tasks.append(3)
    assert sampler.current().task_count == 3
    assert sampler.current().cpu_stats.idle == 410


def test_current_samples_once_when_nothing_is_cached(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, PROC_STAT)
    sampler = StatsSampler(proc_root=str(proc))
    assert sampler.current().cpu_stats.user == 724661
    (proc / "stat").write_text("cpu  1 1 1 1 1 1 1 1 1 1\n")
    assert sampler.current().cpu_stats.user == 724661  # served from the cache


def test_unreadable_sources_report_zeros(tmp_path: Path) -> None:
    sampler = StatsSampler(proc_root=str(tmp_path / "missing"), disk_path=str(tmp_path / "nope"))
    stats = sampler.sample()
    assert stats.mem_stats == MemStats()
    assert stats.disk_stats == DiskStats()
    assert stats.cpu_stats == CpuStats()
    assert stats.load_stats == LoadStats()
    assert stats.cpu_percent == 0.0


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StatsSampler(interval=0)


def test_run_samples_in_the_background(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, PROC_STAT)
    sampler = StatsSampler(proc_root=str(proc), interval=3600)

    async def start_and_stop() -> None:
        runner = asyncio.create_task(sampler.run())
        await asyncio.sleep(0)  # let it reach its first wait; the first sample precedes it
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(start_and_stop())
    (proc / "stat").write_text("cpu  1 1 1 1 1 1 1 1 1 1\n")
    assert sampler.current().cpu_stats.user == 724661  # sampled by run(), before the change


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs Linux /proc")
def test_sampling_this_machine_gives_sane_numbers() -> None:
    stats = StatsSampler().sample()
    assert stats.mem_total_kb > 0
    assert 0 < stats.mem_available_kb <= stats.mem_total_kb
    assert stats.cores >= 1
    assert stats.disk_total > 0
    assert stats.disk_used + stats.disk_free == stats.disk_total
    assert stats.cpu_stats.idle > 0
    assert stats.load_stats.process_total >= 1
    assert 0.0 <= stats.cpu_percent <= 100.0
