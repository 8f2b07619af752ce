"""Machine metrics a worker reports so the manager can place tasks (book ch. 6).

The wire shape is the book's: goprocinfo's JSON keys inside ``MemStats``,
``DiskStats``, ``CpuStats`` and ``LoadStats``, so the book's clients keep working.
Two fields are new: ``Cores`` and ``CpuPercent``. The book computes CPU usage from
counters accumulated since boot, which says nothing about the machine's load now;
``CpuPercent`` is taken over the last sampling interval instead.

Parsing and arithmetic are pure; only :class:`StatsSampler` touches the machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class _Wire(BaseModel):
    # Book keys on the wire, Python names in code; both are accepted on input so
    # neither a worker's JSON nor a test's keyword arguments need translating.
    # Frozen because one cached sample is shared by every reader.
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True, frozen=True
    )


def _kb(key: str, proc_key: str) -> Any:
    # Accepting the /proc/meminfo name too lets parse_meminfo hand its raw
    # key/value pairs straight to the model, with no second lookup table.
    return Field(0, ge=0, alias=key, validation_alias=AliasChoices(key, proc_key))


class MemStats(_Wire):
    """/proc/meminfo in kB (HugePages_* are page counts), under goprocinfo's keys."""

    mem_total: int = _kb("mem_total", "MemTotal")
    mem_free: int = _kb("mem_free", "MemFree")
    mem_available: int = _kb("mem_available", "MemAvailable")
    buffers: int = _kb("buffers", "Buffers")
    cached: int = _kb("cached", "Cached")
    swap_cached: int = _kb("swap_cached", "SwapCached")
    active: int = _kb("active", "Active")
    inactive: int = _kb("inactive", "Inactive")
    active_anon: int = _kb("active_anon", "Active(anon)")
    inactive_anon: int = _kb("inactive_anon", "Inactive(anon)")
    active_file: int = _kb("active_file", "Active(file)")
    inactive_file: int = _kb("inactive_file", "Inactive(file)")
    unevictable: int = _kb("unevictable", "Unevictable")
    mlocked: int = _kb("mlocked", "Mlocked")
    swap_total: int = _kb("swap_total", "SwapTotal")
    swap_free: int = _kb("swap_free", "SwapFree")
    dirty: int = _kb("dirty", "Dirty")
    writeback: int = _kb("write_back", "Writeback")
    anon_pages: int = _kb("anon_pages", "AnonPages")
    mapped: int = _kb("mapped", "Mapped")
    shmem: int = _kb("shmem", "Shmem")
    slab: int = _kb("slab", "Slab")
    s_reclaimable: int = _kb("s_reclaimable", "SReclaimable")
    s_unreclaim: int = _kb("s_unclaim", "SUnreclaim")
    kernel_stack: int = _kb("kernel_stack", "KernelStack")
    page_tables: int = _kb("page_tables", "PageTables")
    nfs_unstable: int = _kb("nfs_unstable", "NFS_Unstable")
    bounce: int = _kb("bounce", "Bounce")
    writeback_tmp: int = _kb("writeback_tmp", "WritebackTmp")
    commit_limit: int = _kb("commit_limit", "CommitLimit")
    committed_as: int = _kb("committed_as", "Committed_AS")
    vmalloc_total: int = _kb("vmalloc_total", "VmallocTotal")
    vmalloc_used: int = _kb("vmalloc_used", "VmallocUsed")
    vmalloc_chunk: int = _kb("vmalloc_chunk", "VmallocChunk")
    hardware_corrupted: int = _kb("hardware_corrupted", "HardwareCorrupted")
    anon_huge_pages: int = _kb("anon_huge_pages", "AnonHugePages")
    huge_pages_total: int = _kb("huge_pages_total", "HugePages_Total")
    huge_pages_free: int = _kb("huge_pages_free", "HugePages_Free")
    huge_pages_rsvd: int = _kb("huge_pages_rsvd", "HugePages_Rsvd")
    huge_pages_surp: int = _kb("huge_pages_surp", "HugePages_Surp")
    hugepagesize: int = _kb("hugepagesize", "Hugepagesize")
    direct_map_4k: int = _kb("direct_map_4k", "DirectMap4k")
    direct_map_2m: int = _kb("direct_map_2M", "DirectMap2M")
    direct_map_1g: int = _kb("direct_map_1G", "DirectMap1G")


class DiskStats(_Wire):
    """Bytes on the worker's data filesystem; ``all == used + free`` as in the book."""

    all: int = Field(0, ge=0)
    used: int = Field(0, ge=0)
    free: int = Field(0, ge=0)
    free_inodes: int = Field(0, ge=0, alias="freeInodes")


class CpuStats(_Wire):
    """The aggregate ``cpu`` line of /proc/stat: jiffies spent in each state since boot."""

    id: str = "cpu"
    user: int = Field(0, ge=0)
    nice: int = Field(0, ge=0)
    system: int = Field(0, ge=0)
    idle: int = Field(0, ge=0)
    iowait: int = Field(0, ge=0)
    irq: int = Field(0, ge=0)
    softirq: int = Field(0, ge=0)
    steal: int = Field(0, ge=0)
    guest: int = Field(0, ge=0)
    guest_nice: int = Field(0, ge=0)


class LoadStats(_Wire):
    """/proc/loadavg: run-queue averages, plus the process counts the book also shows."""

    last1min: float = Field(0.0, ge=0)
    last5min: float = Field(0.0, ge=0)
    last15min: float = Field(0.0, ge=0)
    process_running: int = Field(0, ge=0)
    process_total: int = Field(0, ge=0)
    last_pid: int = Field(0, ge=0)


class Stats(_Wire):
    """What ``GET /stats`` answers; every part defaults to zero like the book's on error."""

    mem_stats: MemStats = Field(default_factory=MemStats, alias="MemStats")
    disk_stats: DiskStats = Field(default_factory=DiskStats, alias="DiskStats")
    cpu_stats: CpuStats = Field(default_factory=CpuStats, alias="CpuStats")
    load_stats: LoadStats = Field(default_factory=LoadStats, alias="LoadStats")
    task_count: int = Field(0, ge=0, alias="TaskCount")
    cores: int = Field(0, ge=0, alias="Cores")
    cpu_percent: float = Field(0.0, ge=0.0, le=100.0, alias="CpuPercent")

    # Properties, not fields, so the wire shape stays the book's.
    @property
    def mem_total_kb(self) -> int:
        return self.mem_stats.mem_total

    @property
    def mem_available_kb(self) -> int:
        return self.mem_stats.mem_available

    @property
    def mem_used_kb(self) -> int:
        return max(0, self.mem_total_kb - self.mem_available_kb)

    @property
    def mem_used_percent(self) -> float:
        """Used share of memory, 0..100; the book's version floors available/total to 0."""
        total = self.mem_total_kb
        return 100 * self.mem_used_kb / total if total else 0.0

    @property
    def disk_total(self) -> int:
        return self.disk_stats.all

    @property
    def disk_free(self) -> int:
        return self.disk_stats.free

    @property
    def disk_used(self) -> int:
        return self.disk_stats.used


def parse_meminfo(text: str) -> MemStats:
    """Read /proc/meminfo text; lines the model does not know (newer kernels) are ignored."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, rest = line.partition(":")
        words = rest.split()
        if colon and words and words[0].isdigit():
            values[key.strip()] = int(words[0])
    if "MemTotal" not in values:
        raise ValueError("not /proc/meminfo text: no MemTotal line")
    return MemStats.model_validate(values)


_CPU_COUNTERS = (
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
)


def parse_cpu_stat(text: str) -> CpuStats:
    """Read the aggregate ``cpu`` line of /proc/stat; older kernels print fewer columns."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "cpu":
            counters = zip(_CPU_COUNTERS, (int(w) for w in words[1:]), strict=False)
            return CpuStats.model_validate(dict(counters))
    raise ValueError("not /proc/stat text: no aggregate 'cpu' line")


def parse_loadavg(text: str) -> LoadStats:
    """Read /proc/loadavg, e.g. ``0.43 0.32 0.33 1/2462 865995``."""
    try:
        one, five, fifteen, procs, last_pid = text.split()[:5]
        running, total = procs.split("/")
        return LoadStats(
            last1min=float(one),
            last5min=float(five),
            last15min=float(fifteen),
            process_running=int(running),
            process_total=int(total),
            last_pid=int(last_pid),
        )
    except ValueError as exc:
        raise ValueError(f"not /proc/loadavg text: {text!r}") from exc


def _idle_busy(prev: CpuStats, cur: CpuStats) -> tuple[int, int]:
    # Each counter's gain is floored at zero: iowait is known to step backwards
    # on some kernels, and one bad counter must not push the result out of range.
    def gain(before: int, after: int) -> int:
        return max(0, after - before)

    idle = gain(prev.idle, cur.idle) + gain(prev.iowait, cur.iowait)
    # guest and guest_nice are left out because the kernel already counts them
    # inside user and nice.
    busy = (
        gain(prev.user, cur.user)
        + gain(prev.nice, cur.nice)
        + gain(prev.system, cur.system)
        + gain(prev.irq, cur.irq)
        + gain(prev.softirq, cur.softirq)
        + gain(prev.steal, cur.steal)
    )
    return idle, busy


def cpu_percent(prev: CpuStats, cur: CpuStats) -> float:
    """CPU busy share between two samples, 0..100, by the book's idle/non-idle formula.

    Taken over the difference so it tells how loaded the machine is now, not on
    average since boot; with no time elapsed there is nothing to measure, so 0.0.
    """
    idle, busy = _idle_busy(prev, cur)
    total = idle + busy
    # Integer numerator: correctly rounded division can then never exceed 100.0.
    return 100 * busy / total if total else 0.0


_M = TypeVar("_M", bound=BaseModel)


class StatsSampler:
    """Samples the machine in the background so ``GET /stats`` answers from memory.

    A source that cannot be read (no /proc outside Linux, a bad disk path) is
    logged and reported as zeros, as the book does, rather than failing the
    worker's API.
    """

    def __init__(
        self,
        *,
        task_count: Callable[[], int] = lambda: 0,
        interval: float = 2.0,
        proc_root: str = "/proc",
        disk_path: str = "/",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"stats interval must be positive, got {interval}")
        self.interval = interval
        self._task_count = task_count
        self._proc = Path(proc_root)
        self._disk_path = disk_path
        self._baseline = CpuStats()  # all zeros: the first sample measures since boot
        self._latest: Stats | None = None

    def sample(self) -> Stats:
        """Take a sample now and make it the cached one."""
        cpu = self._read_or_zero(lambda: parse_cpu_stat(self._read_proc("stat")), CpuStats)
        idle, busy = _idle_busy(self._baseline, cpu)
        if idle + busy == 0 and self._latest is not None:
            # Too soon (or /proc/stat unreadable): keep the last figure and the
            # old baseline rather than report an idle machine.
            percent = self._latest.cpu_percent
        else:
            percent = cpu_percent(self._baseline, cpu)
            self._baseline = cpu
        self._latest = Stats(
            mem_stats=self._read_or_zero(
                lambda: parse_meminfo(self._read_proc("meminfo")), MemStats
            ),
            disk_stats=self._read_or_zero(self._read_disk, DiskStats),
            cpu_stats=cpu,
            load_stats=self._read_or_zero(
                lambda: parse_loadavg(self._read_proc("loadavg")), LoadStats
            ),
            task_count=self._task_count(),
            cores=os.cpu_count() or 1,
            cpu_percent=percent,
        )
        return self._latest

    def current(self) -> Stats:
        """The cached sample, with TaskCount made live since counting tasks is free."""
        latest = self._latest if self._latest is not None else self.sample()
        return latest.model_copy(update={"task_count": self._task_count()})

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def _read_proc(self, name: str) -> str:
        return (self._proc / name).read_text(encoding="utf-8")

    def _read_disk(self) -> DiskStats:
        fs = os.statvfs(self._disk_path)
        # f_bfree, not f_bavail: Docker writes as root and may use reserved blocks.
        total = fs.f_blocks * fs.f_frsize
        free = fs.f_bfree * fs.f_frsize
        return DiskStats(all=total, used=total - free, free=free, free_inodes=fs.f_ffree)

    @staticmethod
    def _read_or_zero(read: Callable[[], _M], empty: Callable[[], _M]) -> _M:
        try:
            return read()
        except (OSError, ValueError) as exc:
            log.warning("stats: cannot sample: %s", exc)
            return empty()
