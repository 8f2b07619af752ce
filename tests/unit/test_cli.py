"""The CLI's pure helpers: the exact text people see, and how their input is read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cube.cli import errors
from cube.cli.cluster import Cluster
from cube.cli.errors import CliError
from cube.cli.format import (
    format_age,
    format_bytes,
    format_gib,
    format_mib,
    format_ports,
    short_id,
)
from cube.cli.ids import match_prefix, parse_full_id
from cube.cli.taskfile import event_body, is_task_event, parse_document, syntax_of
from cube.cli.tasks import progress, shown_container, status_row
from cube.cli.up import ready_message
from cube.manager.client import (
    ManagerClient,
    ManagerError,
    ManagerRejected,
    ManagerUnreachable,
    manager_url,
)
from cube.task import State, Task

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# --- ages and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=0), "just now"),
        (timedelta(seconds=-5), "just now"),  # a clock a little ahead of ours
        (timedelta(seconds=1), "1s ago"),
        (timedelta(seconds=59), "59s ago"),
        (timedelta(seconds=60), "1m ago"),
        (timedelta(minutes=2, seconds=59), "2m ago"),
        (timedelta(hours=3, minutes=59), "3h ago"),
        (timedelta(days=2, hours=23), "2d ago"),
    ],
)
def test_age_uses_the_largest_whole_unit(ago: timedelta, text: str) -> None:
    assert format_age(NOW - ago, now=NOW) == text


def test_age_of_something_that_never_happened_is_a_dash() -> None:
    assert format_age(None, now=NOW) == "-"


def test_age_treats_naive_times_as_utc() -> None:
    naive = (NOW - timedelta(minutes=5)).replace(tzinfo=None)
    assert format_age(naive, now=NOW) == "5m ago"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "-"),
        (1000, "1000B"),
        (1024, "1KiB"),
        (256 * 1024**2, "256MiB"),
        (1536 * 1024**2, "1.5GiB"),
        (3 * 1024**4, "3TiB"),
        (5000 * 1024**4, "5000TiB"),
    ],
)
def test_bytes_are_shown_in_binary_units(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_node_memory_is_kb_shown_as_mib_and_disk_bytes_as_gib() -> None:
    assert format_mib(24_684_092) == "24105"
    assert format_gib(270_553_174_016) == "252.0"
    assert format_gib(0) == "0.0"


def test_ports_use_dockers_notation() -> None:
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostPort": "49154"}]}
    assert format_ports(ports) == "0.0.0.0:49153->80/tcp, 0.0.0.0:49154->80/tcp"
    assert format_ports(None) == "-"
    twins = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}, {"HostIp": "::", "HostPort": "2"}]}
    assert format_ports(twins) == "0.0.0.0:1->80/tcp"
    assert format_ports({"80/tcp": [{"HostIp": "::", "HostPort": "2"}]}) == ":::2->80/tcp"


def test_short_id_is_the_first_block_of_the_uuid() -> None:
    task_id = uuid.UUID("6be4cb6b-61d1-40cb-bc7b-9cacefefa60c")
    assert short_id(task_id) == "6be4cb6b"


# --- ID prefixes -------------------------------------------------------------------

IDS = [
    uuid.UUID("abcd0000-0000-4000-8000-000000000001"),
    uuid.UUID("abcd1111-0000-4000-8000-000000000002"),
    uuid.UUID("12345678-0000-4000-8000-000000000003"),
]


@pytest.mark.parametrize("text", ["1", "1234", "12345678", "12345678-0", " 12345678-0000-4 "])
def test_a_unique_prefix_finds_its_task(text: str) -> None:
    assert match_prefix(text, IDS) == IDS[2]


def test_prefix_matching_ignores_case_and_dashes() -> None:
    assert match_prefix("ABCD0", IDS) == IDS[0]
    assert match_prefix("1234567800", IDS) == IDS[2]  # as in a container name


def test_an_ambiguous_prefix_is_refused_with_the_candidates() -> None:
    with pytest.raises(CliError, match="ambiguous: it matches 2 tasks") as caught:
        match_prefix("abcd", IDS)
    assert "abcd0000-0000" in str(caught.value) and "abcd1111-0000" in str(caught.value)


@pytest.mark.parametrize("text", ["ff", "xyz", "abcd2"])
def test_an_unknown_prefix_is_refused(text: str) -> None:
    with pytest.raises(CliError, match="no task with an ID starting with"):
        match_prefix(text, IDS)


def test_an_empty_prefix_is_refused() -> None:
    with pytest.raises(CliError, match="required"):
        match_prefix("  ", IDS)


def test_full_ids_are_recognised() -> None:
    assert parse_full_id(str(IDS[0])) == IDS[0]
    assert parse_full_id("abcd") is None


# --- task files --------------------------------------------------------------------


def test_a_book_task_event_is_detected_and_sent_as_it_is() -> None:
    event = {"ID": "e", "State": 2, "Task": {"Name": "x", "Image": "i"}}
    assert is_task_event(event)
    assert event_body(event) == event


def test_a_bare_task_is_wrapped_in_a_run_request_with_generated_ids() -> None:
    task = {"Name": "web", "Image": "cube/http:latest"}
    assert not is_task_event(task)
    body = event_body(task)
    assert body["State"] == int(State.RUNNING)
    assert body["Task"]["Name"] == "web" and body["Task"]["Image"] == "cube/http:latest"
    uuid.UUID(body["ID"])
    uuid.UUID(body["Task"]["ID"])
    assert event_body(task)["Task"]["ID"] != body["Task"]["ID"]


def test_a_bare_task_keeps_its_own_id() -> None:
    task_id = str(uuid.uuid4())
    assert event_body({"ID": task_id, "Image": "i"})["Task"]["ID"] == task_id


@pytest.mark.parametrize(
    ("name", "text", "syntax"),
    [
        ("task.json", "Name: x", "json"),
        ("task.yaml", "{}", "yaml"),
        ("task.YML", "{}", "yaml"),
        ("-", ' {"Name": "x"}', "json"),
        ("-", "Name: x", "yaml"),
        ("task", "[1]", "json"),
    ],
)
def test_syntax_comes_from_the_extension_or_else_the_content(
    name: str, text: str, syntax: str
) -> None:
    assert syntax_of(name, text) == syntax


def test_yaml_and_json_give_the_same_document() -> None:
    yaml_text = "Name: web\nImage: cube/http:latest\nExposedPorts:\n  80/tcp: {}\nMemory: 64MiB\n"
    json_text = (
        '{"Name": "web", "Image": "cube/http:latest", "ExposedPorts": {"80/tcp": {}},'
        ' "Memory": "64MiB"}'
    )
    assert parse_document(yaml_text, "yaml", "a") == parse_document(json_text, "json", "b")


def test_yaml_values_json_cannot_hold_become_strings() -> None:
    assert parse_document("Name: 2024-01-02\nImage: i\n", "yaml", "f")["Name"] == "2024-01-02"


@pytest.mark.parametrize(
    ("text", "syntax", "message"),
    [
        ('{"Name": ', "json", "invalid JSON in f: Expecting value (line 1, column 10)"),
        ("Name: x\n  Image: [y\n", "yaml", "invalid YAML in f: mapping values are not allowed"),
        ("Name: [x\n", "yaml", "invalid YAML in f:"),
        ("", "yaml", "f is empty"),
        ("[1, 2]", "json", "f must hold one object (a task or a TaskEvent), not a list"),
        ('"x"', "json", "not a str"),
    ],
)
def test_bad_documents_are_explained_on_one_line(text: str, syntax: str, message: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_document(text, syntax, "f")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# --- the manager client ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("localhost:5555", "http://localhost:5555"),
        ("localhost", "http://localhost:5555"),
        ("10.0.0.7:6000/", "http://10.0.0.7:6000"),
        ("http://cube.example", "http://cube.example"),
        ("https://cube.example:8443", "https://cube.example:8443"),
    ],
)
def test_manager_addresses_accept_host_port_or_url(address: str, url: str) -> None:
    assert manager_url(address) == url


@pytest.mark.parametrize("address", ["", "ftp://x", "http://", "host:port"])
def test_bad_manager_addresses_are_refused(address: str) -> None:
    with pytest.raises(ManagerError):
        manager_url(address)


def client_answering(handler: httpx.MockTransport) -> ManagerClient:
    return ManagerClient("localhost:5555", transport=handler)


def test_a_refused_connection_says_so_plainly() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with (
        client_answering(httpx.MockTransport(refuse)) as client,
        pytest.raises(ManagerUnreachable) as caught,
    ):
        client.tasks()
    assert str(caught.value) == "cannot reach manager at http://localhost:5555: connection refused"


def test_a_rejected_task_carries_the_managers_message() -> None:
    def reject(_: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"HTTPStatusCode": 400, "Message": "missing field"})

    with (
        client_answering(httpx.MockTransport(reject)) as client,
        pytest.raises(ManagerRejected) as caught,
    ):
        client.submit({"Task": {}})
    assert caught.value.status == 400
    assert str(caught.value) == "invalid task: missing field"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, text="boom\nagain"), "failed: HTTP 500: boom again"),
        (httpx.Response(200, text="<html>"), "did not answer with JSON"),
        (httpx.Response(200, json={"not": "a list"}), "not a list"),
        (httpx.Response(200, json=[{"Image": "x", "Surprise": 1}]), "not a Cube task"),
    ],
)
def test_answers_that_are_not_cubes_api_are_errors_not_crashes(
    response: httpx.Response, message: str
) -> None:
    with (
        client_answering(httpx.MockTransport(lambda _: response)) as client,
        pytest.raises(ManagerError, match=message),
    ):
        client.tasks()


def test_fail_prints_exactly_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        errors.run(lambda **_: (_ for _ in ()).throw(CliError("two\nlines")))
    assert caught.value.code == 1
    assert capsys.readouterr().err == "cube: two lines\n"


# --- presentation --------------------------------------------------------------------


def test_rows_and_progress_show_what_a_task_is_doing() -> None:
    task = Task(
        ID=uuid.UUID("6be4cb6b-61d1-40cb-bc7b-9cacefefa60c"),
        Name="web server",
        Image="cube/http:latest",
        State=State.RUNNING,
        Node="127.0.0.1:5556",
        RestartCount=2,
        HostPorts={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}]},
        StartTime=datetime.now(UTC) - timedelta(minutes=3),
    )
    row = [str(cell) for cell in status_row(task)]
    assert row == [
        "6be4cb6b",
        "web server",
        "3m ago",
        "Running",
        "web-server-6be4cb6b61d1-2",
        "cube/http:latest",
        "2",
        "127.0.0.1:5556",
    ]
    assert progress(task) == (
        "  Running    on 127.0.0.1:5556, container web-server-6be4cb6b61d1-2,"
        " ports 0.0.0.0:49153->80/tcp"
    )
    pending = Task(Image="i", Reason="no feasible node: memory")
    assert progress(pending) == "  Pending    no feasible node: memory"
    assert shown_container(pending) == "-"


# --- cube up ----------------------------------------------------------------------------


def test_a_cluster_is_a_manager_and_numbered_workers(tmp_path: Path) -> None:
    cluster = Cluster(data_dir=tmp_path, workers=2, port=7000, worker_port=7100, name="demo")
    assert [(m.role, m.name, m.port) for m in cluster.members] == [
        ("manager", "manager", 7000),
        ("worker", "demo-1", 7100),
        ("worker", "demo-2", 7101),
    ]
    manager_args = cluster.manager.args
    assert "-w" not in manager_args  # the workers join it
    for worker in cluster.worker_members:
        assert worker.args[worker.args.index("--join") + 1] == "https://127.0.0.1:7000"
        assert worker.args[worker.args.index("--tls-cert") + 1] == str(tmp_path / "tls/worker.pem")
        assert not any("token" in arg.lower() for arg in worker.args)  # not on a command line
    assert "persistent" in manager_args and "persistent" in cluster.worker_members[0].args
    assert cluster.manager_url == "https://127.0.0.1:7000"  # mutual TLS, always
    assert manager_args[manager_args.index("--tls-ca") + 1] == str(tmp_path / "tls/ca.pem")


def test_a_wildcard_listen_address_is_reached_on_loopback(tmp_path: Path) -> None:
    cluster = Cluster(data_dir=tmp_path, workers=1, host="0.0.0.0")
    assert cluster.manager_url == "https://127.0.0.1:5555"


@pytest.mark.parametrize(("name", "workers"), [("bad name", 1), ("-x", 1), ("ok", 0)])
def test_bad_cluster_shapes_are_refused(tmp_path: Path, name: str, workers: int) -> None:
    with pytest.raises(CliError):
        Cluster(data_dir=tmp_path, name=name, workers=workers)


def test_next_commands_name_the_manager_only_when_it_is_not_the_default(tmp_path: Path) -> None:
    default = ready_message(Cluster(data_dir=Path(".cube"), workers=1), detach=False)
    assert "cube status  " in default and "-m" not in default and "Ctrl-C" in default
    moved = ready_message(Cluster(data_dir=tmp_path, workers=1, port=6000), detach=True)
    assert "cube status -m 127.0.0.1:6000" in moved
    assert f"cube down --data-dir {tmp_path}" in moved
    assert (
        f"The web UI: https://127.0.0.1:6000/ui/ (log in with the token in {tmp_path}/token)"
        in moved
    )


class _Replay:
    """A ManagerClient stand-in answering a task's successive versions."""

    def __init__(self, versions: list[Task]) -> None:
        self.versions = versions

    def task(self, task_id: uuid.UUID) -> Task:
        return self.versions.pop(0)


def test_run_wait_reports_a_first_failure_it_only_saw_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manager restarts a first failure at once: a poll may see the restart only."""
    from cube.cli import tasks

    monkeypatch.setattr(tasks, "POLL_INTERVAL", 0.0)
    pending = Task(Image="img")
    restarted = pending.model_copy(
        update={
            "State": State.SCHEDULED,
            "RestartCount": 1,
            "Reason": "restarting after: exited with code 1",
        }
    )
    running_again = restarted.model_copy(update={"State": State.RUNNING})
    for seen in (restarted, running_again):  # the new run may already be Running
        client = _Replay([pending, seen])
        with pytest.raises(CliError, match=r"failed: exited with code 1 \(restarting\)$"):
            tasks.watch(client, pending, timeout=10, quiet=True)  # type: ignore[arg-type]
