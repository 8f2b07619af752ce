"""A client generated from each server's OpenAPI document works (issue 14).

openapi-python-client (pinned, in a venv of its own: scripts/setup.sh) generates a
Python client from the /openapi.json a real `cube manager` and a real `cube worker`
serve, as a user of the API would. The generator must warn of nothing but the one
thing it cannot do (read an NDJSON stream) and leave out no operation; the test then
imports each client and drives the running server with it: the book's TaskEvent
submitted, tasks listed and read, a job created and read back with its Deployment,
nodes listed, events read; typed models come back, not dicts.

The worker runs the simulated runtime: nothing here starts a container.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from tests.support import ROOT, ManagerProcess, WorkerProcess, containers_of, wait_for

GENERATOR = ROOT / ".venv-openapi" / "bin" / "openapi-python-client"
pytestmark = pytest.mark.skipif(
    not GENERATOR.exists(),
    reason=f"no {GENERATOR.relative_to(ROOT)}: scripts/setup.sh installs the pinned generator",
)
MANAGEMENT, JOIN, WORKER = "client-mgmt-6b1e", "client-join-0f3a", "client-worker-93d4"
PENDING, SCHEDULED, RUNNING = 0, 1, 2
NDJSON = "application/x-ndjson"
# What the generator says of a response in a media type it does not read: it reads no
# NDJSON stream (openapi-generators/openapi-python-client#1337) and leaves that one
# answer to the caller, who reads it line by line (the operation is still generated).
STREAM = re.compile(
    r"WARNING parsing (\w+) (\S+) within \w+\.\n+"
    r"Cannot parse response for status code [^\n]*"
    rf"\(Unsupported content_type {re.escape(NDJSON)}\), response will be omitted[^\n]*\n+"
    r"\{\n.*?\n\}\n",  # the response, as JSON
    re.S,
)


@pytest.fixture
def generate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], ModuleType]]:
    """Generate a client package from a served document; import it."""
    made: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(url: str, package: str) -> ModuleType:
        doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
        path = tmp_path / f"{package}.json"
        path.write_text(json.dumps(doc))
        # Its own ruff formats what it writes (without, it warns).
        env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ['PATH']}"}
        command = [GENERATOR, "generate", "--path", path, "--output-path", tmp_path / package]
        generated = subprocess.run(
            [*command, "--meta", "none"], capture_output=True, text=True, env=env, timeout=300
        )
        report = generated.stdout + generated.stderr
        assert generated.returncode == 0, report
        check_report(doc, report)
        made.append(package)
        client = importlib.import_module(package)
        for method, route, operation in operations(doc):  # every operation is there
            module = importlib.import_module(f"{package}.api.default.{name(operation)}")
            source = Path(module.__file__ or "").read_text()
            assert f'"method": "{method}"' in source, (method, route)
        return client

    yield run
    for package in made:
        for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[module]


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, methods in doc["paths"].items() for m, op in methods.items()]


def name(operation: dict[str, Any]) -> str:
    """The module the generator makes for an operation (its ID, snake case)."""
    return re.sub("_+", "_", operation["operationId"]).strip("_")


def check_report(doc: dict[str, Any], report: str) -> None:
    """Nothing in the generator's report but a stream's warning, once per stream."""
    streams = {
        (method.upper(), path)
        for method, path, operation in operations(doc)
        for status, answer in operation["responses"].items()
        if status.startswith("2") and set(answer.get("content", {})) == {NDJSON}
    }
    assert set(STREAM.findall(report)) == streams, report
    rest = STREAM.sub("", report)
    if streams:
        rest = rest.replace("Warning(s) encountered while generating.", "", 1)
        rest = re.sub(r"If you believe this was a mistake[^\n]*", "", rest, count=1)
    assert not re.search(r"warn|unable|fail|cannot|could not|skipping|error", rest, re.I), report


def api(client: ModuleType, operation: str) -> Any:
    return importlib.import_module(f"{client.__name__}.api.default.{operation}")


def test_a_client_generated_from_the_managers_document_works(
    workers: Callable[..., WorkerProcess],
    managers: Callable[..., ManagerProcess],
    generate: Callable[[str, str], ModuleType],
) -> None:
    worker = workers("--runtime", "simulated", "--token", WORKER)
    manager = managers(
        [worker], "--token", MANAGEMENT, "--join-token", JOIN, "--worker-token", WORKER
    )
    cube = generate(manager.url, "cube_manager_client")
    models = importlib.import_module(f"{cube.__name__}.models")
    client = cube.AuthenticatedClient(base_url=manager.url, token=MANAGEMENT, timeout=15)

    # The book's TaskEvent (chapter 5): run this task.
    task_id = uuid4()
    event = models.TaskEventInput(
        id=uuid4(),
        state=models.State(SCHEDULED),
        timestamp=datetime.now(UTC),
        task=models.TaskInput(
            id=task_id,
            name="test-chapter-5-1",
            state=models.State(PENDING),
            image="cube/busybox:latest",
            memory="16MiB",
        ),
    )
    submitted = api(cube, "post_task_tasks_post").sync_detailed(client=client, body=event)
    assert submitted.status_code == 201, submitted.content
    assert isinstance(submitted.parsed, models.Task), submitted.parsed
    assert submitted.parsed.id == task_id and submitted.parsed.memory == 16 * 2**20

    def task() -> Any:
        return api(cube, "get_task_tasks_task_id_get").sync(task_id, client=client)

    running = wait_for(lambda: (t := task()).state == models.State(RUNNING) and t, 30)
    assert isinstance(running, models.Task) and running.node == worker.address
    assert datetime.fromisoformat(running.start_time) > datetime(2000, 1, 1, tzinfo=UTC)
    listed = api(cube, "list_tasks_tasks_get").sync(client=client)
    assert all(isinstance(t, models.Task) for t in listed)
    assert task_id in {t.id for t in listed}

    # A job, read back with its Deployment.
    job = models.JobInput(
        name="web",
        count=2,
        task=models.TaskTemplateInput(image="cube/busybox:latest", memory="16MiB"),
    )
    created = api(cube, "post_job_jobs_post").sync_detailed(client=client, body=job)
    assert created.status_code == 201, created.content
    assert isinstance(created.parsed, models.JobAnswer)
    read = api(cube, "get_job_jobs_name_get").sync("web", client=client)
    assert isinstance(read, models.JobAnswer) and isinstance(read.task, models.TaskTemplateOutput)
    assert read.version == 1 and read.count == 2 and read.task.memory == 16 * 2**20
    assert isinstance(read.deployment, models.Deployment), read.deployment
    assert read.deployment.version == 1 and read.deployment.desired == 2
    jobs = api(cube, "list_jobs_jobs_get").sync(client=client)
    assert [j.name for j in jobs] == ["web"] and isinstance(jobs[0], models.JobAnswer)

    def job_tasks() -> Any:
        found = api(cube, "list_tasks_tasks_get").sync(client=client, job="web")
        return len(found) == 2 and found

    assert all(t.job == "web" for t in wait_for(job_tasks, 30))

    nodes = api(cube, "nodes_nodes_get").sync(client=client)
    assert [(type(n), n.name, n.status) for n in nodes] == [(models.Node, worker.address, "ready")]

    # A stream: the client leaves its body to the caller; each line is a model.
    stream = api(cube, "stream_events_get").sync_detailed(client=client, follow=False)
    assert stream.status_code == 200
    events = [models.Event.from_dict(json.loads(line)) for line in stream.content.splitlines()]
    assert {(e.topic.value, e.key) for e in events} >= {("Task", str(task_id)), ("Job", "web")}

    # What the errors are: the documented ErrorBody, typed too.
    missing = api(cube, "get_task_tasks_task_id_get").sync_detailed(uuid4(), client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorBody)
    wrong = cube.AuthenticatedClient(base_url=manager.url, token="wrong")
    refused = api(cube, "list_tasks_tasks_get").sync_detailed(client=wrong)
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.message
    assert not containers_of(worker.name)


def test_a_client_generated_from_the_workers_document_works(
    workers: Callable[..., WorkerProcess], generate: Callable[[str, str], ModuleType]
) -> None:
    worker = workers("--runtime", "simulated", "--token", WORKER)
    cube = generate(worker.url, "cube_worker_client")
    models = importlib.import_module(f"{cube.__name__}.models")
    # The worker's credential (here the static flow's shared --token) is its manager's.
    client = cube.AuthenticatedClient(base_url=worker.url, token=WORKER, timeout=15)

    task_id = uuid4()
    event = models.TaskEvent(
        state=models.State(SCHEDULED),
        task=models.TaskInput(id=task_id, image="cube/busybox:latest"),
    )
    submitted = api(cube, "post_task_tasks_post").sync_detailed(client=client, body=event)
    assert submitted.status_code == 201, submitted.content
    assert isinstance(submitted.parsed, models.Task) and submitted.parsed.id == task_id

    def running() -> Any:
        listed = api(cube, "list_tasks_tasks_get").sync(client=client)
        return [t for t in listed if t.id == task_id and t.state == models.State(RUNNING)]

    assert all(isinstance(t, models.Task) for t in wait_for(running, 30))
    read = api(cube, "get_task_tasks_task_id_get").sync(task_id, client=client)
    assert isinstance(read, models.Task) and isinstance(read.id, UUID)
    stats = api(cube, "stats_stats_get").sync(client=client)
    assert isinstance(stats, models.Stats), stats

    stopped = api(cube, "delete_task_tasks_task_id_delete").sync_detailed(
        task_id, client=client, restart_count=0
    )
    assert stopped.status_code == 204, stopped.content
    refused = api(cube, "list_tasks_tasks_get").sync_detailed(
        client=cube.AuthenticatedClient(base_url=worker.url, token=MANAGEMENT)
    )
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorBody)
    assert not containers_of(worker.name)
