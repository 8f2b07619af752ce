"""The node model: its wire format, its free-capacity helpers and how it reads stats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from cube.node import DOWN, READY, Node, worker_addresses

WIRE_FIELDS = [
    "Name",
    "Ip",
    "Api",
    "Cores",
    "Memory",
    "MemoryAllocated",
    "Disk",
    "DiskAllocated",
    "Role",
    "TaskCount",
    "Stats",
    "Status",
    "Docker",
    "CpuAllocated",
    "CpuPercent",
    "PortsAllocated",
    "Labels",
    "Attributes",
    "Eligible",
    "Draining",
    "DrainDeadline",
    "Joined",
]


def test_wire_has_exactly_the_book_fields_plus_cube_ones() -> None:
    assert list(Node(Name="w1:5556").to_wire()) == WIRE_FIELDS


def test_wire_round_trip_through_json() -> None:
    node = Node(
        Name="w1:5556",
        Ip="10.0.0.1",
        Api="http://10.0.0.1:5556",
        Cores=4,
        Memory=8_000_000,
        MemoryAllocated=1024,
        Disk=10**11,
        DiskAllocated=10**9,
        TaskCount=2,
        Stats={"Cores": 4},
        Status=READY,
        Docker=False,
        CpuAllocated=1.5,
        CpuPercent=12.5,
        PortsAllocated={9090, 8080},
    )
    wire = node.to_wire()
    assert wire["PortsAllocated"] == [8080, 9090]
    assert Node.from_wire(json.dumps(wire)) == node
    assert Node.from_wire(wire) == node


def test_unknown_fields_are_ignored_so_older_clients_read_newer_managers() -> None:
    assert Node.from_wire({"Name": "w1:5556", "Zone": "eu"}) == Node(Name="w1:5556")


@pytest.mark.parametrize("field", ["Cores", "Memory", "MemoryAllocated", "Disk", "TaskCount"])
def test_negative_capacity_is_rejected(field: str) -> None:
    with pytest.raises(ValidationError):
        Node.from_wire({"Name": "w1:5556", field: -1})


def test_a_new_node_is_a_down_worker_until_it_answers() -> None:
    node = Node(Name="w1:5556")
    assert (node.Role, node.Status, node.is_ready) == ("worker", DOWN, False)
    node.Status = READY
    assert node.is_ready


@pytest.mark.parametrize(
    ("address", "name", "ip", "api"),
    [
        ("127.0.0.1:5556", "127.0.0.1:5556", "127.0.0.1", "http://127.0.0.1:5556"),
        ("worker-1:7000", "worker-1:7000", "worker-1", "http://worker-1:7000"),
        ("http://10.0.0.2:5556/", "10.0.0.2:5556", "10.0.0.2", "http://10.0.0.2:5556"),
    ],
)
def test_for_worker(address: str, name: str, ip: str, api: str) -> None:
    node = Node.for_worker(address)
    assert (node.Name, node.Ip, node.Api) == (name, ip, api)


def test_free_capacity_helpers_keep_the_book_units() -> None:
    node = Node(
        Name="w1:5556",
        Cores=4,
        CpuAllocated=1.5,
        Memory=2048,  # kB
        MemoryAllocated=512,  # kB
        Disk=10_000,  # bytes
        DiskAllocated=2_500,  # bytes
    )
    assert node.free_cores == 2.5
    assert node.free_memory_kb == 1536
    assert node.free_disk == 7_500


# The worker's /stats JSON as cube.stats serialises it (goprocinfo's keys, as the book).
STATS: dict[str, Any] = {
    "MemStats": {"mem_total": 32_488_372, "mem_available": 20_000_000},
    "DiskStats": {"all": 500_000_000_000, "used": 1, "free": 2},
    "CpuStats": {"user": 1},
    "LoadStats": {"last1min": 0.5},
    "TaskCount": 9,
    "Cores": 12,
    "CpuPercent": 37.5,
}


def test_apply_stats_takes_capacity_and_cpu_but_not_task_count() -> None:
    node = Node(Name="w1:5556", TaskCount=3)
    node.apply_stats(STATS)
    assert (node.Cores, node.Memory, node.Disk, node.CpuPercent) == (
        12,
        32_488_372,
        500_000_000_000,
        37.5,
    )
    assert node.TaskCount == 3
    assert node.Stats == STATS
    assert node.Status == DOWN  # readiness is the manager's decision


def test_apply_stats_accepts_the_proc_spelling_too() -> None:
    node = Node(Name="w1:5556")
    node.apply_stats({"MemStats": {"MemTotal": 1000}, "DiskStats": {"All": 2000}})
    assert (node.Memory, node.Disk) == (1000, 2000)


@pytest.mark.parametrize(
    "stats",
    [
        {},
        {"MemStats": None, "DiskStats": "x", "Cores": 0, "CpuPercent": "high"},
        {"MemStats": {"mem_total": 0}, "DiskStats": {"all": -5}, "Cores": True},
        {"CpuPercent": float("nan")},
    ],
)
def test_odd_stats_leave_known_capacity_alone(stats: dict[str, Any]) -> None:
    node = Node(Name="w1:5556", Cores=2, Memory=1000, Disk=2000, CpuPercent=10.0)
    node.apply_stats(stats)
    assert (node.Cores, node.Memory, node.Disk, node.CpuPercent) == (2, 1000, 2000, 10.0)


@pytest.mark.parametrize(("reported", "kept"), [(-3.0, 0.0), (250.0, 100.0)])
def test_cpu_percent_is_clamped(reported: float, kept: float) -> None:
    node = Node(Name="w1:5556")
    node.apply_stats({"CpuPercent": reported})
    assert node.CpuPercent == kept


# --- the -w list of `cube manager` ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("localhost:5556", ["localhost:5556"]),
        (" a:1 , b:2 ,", ["a:1", "b:2"]),
        ("a:1,b:2,a:1", ["a:1", "b:2"]),
        ("a:1,http://a:1/,A:1", ["a:1"]),
        ("h,h:80,http://H:80", ["h"]),
        ("https://h,h:443", ["https://h", "h:443"]),  # another scheme: another worker
        ("h:1,h:2", ["h:1", "h:2"]),
        ("10.0.0.7:6000,[::1]:5556", ["10.0.0.7:6000", "[::1]:5556"]),
    ],
)
def test_worker_addresses_are_kept_once_each(text: str, addresses: list[str]) -> None:
    assert worker_addresses(text) == addresses


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host:abc", "invalid worker address 'host:abc': the port must be a number"),
        ("a:1,host:99999", "'host:99999': the port must be a number from 1 to 65535"),
        ("host:0", "'host:0': the port must be"),
        ("host:", "'host:': the port must be"),
        (":5556", "':5556': the host is missing"),
        ("http://", "the host is missing"),
        ("ftp://h:21", "expected host:port or an http(s) URL"),
        ("ho st:1", "expected host:port"),
        ("h:1?x=1", "expected host:port"),
        ("", "name at least one worker"),
        (" , ", "name at least one worker"),
    ],
)
def test_bad_worker_addresses_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        worker_addresses(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
