"""The manager's HTTP API in-process: the book's routes, bodies and codes, and errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from cube.clock import ManualClock
from cube.manager.api import create_app
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.scheduler import Epvm
from cube.transport import InProcessTransport, lifespan

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    manager = Manager(["w1:5556"], Epvm(), MemoryBackend(), clock=ManualClock())
    app = create_app(manager)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield client


def book_event(**task: object) -> dict[str, object]:
    """The book's TaskEvent body, as its examples send it."""
    body = {"ID": str(uuid.uuid4()), "Name": "t", "State": 1, "Image": "strm/helloworld-http"}
    body.update(task)
    return {"ID": str(uuid.uuid4()), "State": 2, "Timestamp": "2026-01-01T00:00:00Z", "Task": body}


async def test_the_books_routes(api: httpx.AsyncClient) -> None:
    created = await api.post("/tasks", json=book_event())
    assert created.status_code == 201
    task = created.json()
    assert task["State"] == 0 and task["DesiredState"] == 2
    listed = await api.get("/tasks")
    assert [t["ID"] for t in listed.json()] == [task["ID"]]
    one = await api.get(f"/tasks/{task['ID']}")
    assert one.status_code == 200 and one.json()["Name"] == "t"
    history = await api.get(f"/tasks/{task['ID']}/events")
    assert [e["State"] for e in history.json()] == [2]
    assert (await api.delete(f"/tasks/{task['ID']}")).status_code == 204
    stopped = (await api.get(f"/tasks/{task['ID']}")).json()
    assert (stopped["State"], stopped["DesiredState"]) == (3, 3)
    nodes = (await api.get("/nodes")).json()
    assert [(n["Name"], n["Status"]) for n in nodes] == [("w1:5556", "down")]
    health = (await api.get("/health")).json()
    assert health == {
        "Role": "manager",
        "Workers": 1,
        "WorkersReady": 0,
        "Tasks": 1,
        "Tokens": False,
        "Leading": True,  # a single manager leads itself; Leader and Term: on etcd
    }


async def test_an_array_is_accepted_together(api: httpx.AsyncClient) -> None:
    answer = await api.post("/tasks", json=[book_event(), book_event()])
    assert answer.status_code == 201 and len(answer.json()) == 2
    mixed = [book_event(), {**book_event(), "State": 3}]
    refused = await api.post("/tasks", json=mixed)
    assert refused.status_code == 400
    assert "each State must be Scheduled or Running" in refused.json()["Message"]
    assert len((await api.get("/tasks")).json()) == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/tasks/nope", None, 400, "expected a UUID"),
        ("GET", f"/tasks/{uuid.uuid4()}", None, 404, "not found"),
        ("DELETE", f"/tasks/{uuid.uuid4()}", None, 404, "not found"),
        ("POST", "/tasks", {"State": 2, "Task": {"Image": "x", "Colour": 1}}, 400, "Colour"),
        ("POST", "/tasks", {"State": 4, "Task": {"Image": "x"}}, 400, "not Failed"),
        ("POST", "/tasks", [{"State": 2}], 400, "Task"),
        (
            "POST",
            "/tasks",
            {"State": 2, "Task": {"Image": "x", "Constraints": [{"Attribute": "zone"}]}},
            400,
            "missing field 'Task.Constraints.0.Operator'",
        ),
        (
            "POST",
            "/tasks",
            book_event(Constraints=[{"Attribute": "zone", "Operator": "~", "Value": "a"}]),
            400,
            "Task.Constraints.0.Operator: must be one of '=', '!=', 'in', 'not in', 'exists'",
        ),
        (
            "POST",
            "/tasks",
            book_event(Constraints=[{"Attribute": "zone", "Operator": "in"}]),
            400,
            "Task.Constraints.0: Value is required for Operator 'in'",
        ),
        ("POST", "/tasks", book_event(DistinctHosts="maybe"), 400, "Task.DistinctHosts"),
    ],
)
async def test_bad_requests_get_a_4xx_with_a_message(
    api: httpx.AsyncClient, method: str, path: str, body: object, status: int, message: str
) -> None:
    answer = await api.request(method, path, json=body)
    assert answer.status_code == status
    assert answer.json()["HTTPStatusCode"] == status
    assert message in answer.json()["Message"]


JOB = {"Name": "web", "Count": 3, "Task": {"Image": "cube/http"}, "Update": {"MaxParallel": 2}}


async def test_the_jobs_routes(api: httpx.AsyncClient) -> None:
    created = await api.post("/jobs", json=JOB)
    assert created.status_code == 201
    job = created.json()
    assert (job["Version"], job["Count"], job["Deployment"]["Status"]) == (1, 3, "running")
    assert (await api.post("/jobs", json=JOB)).json()["Version"] == 1  # the same: no change
    changed = {**JOB, "Task": {"Image": "cube/http", "Env": ["A=1"]}}
    assert (await api.post("/jobs", json=changed)).json()["Version"] == 2
    assert [j["Name"] for j in (await api.get("/jobs")).json()] == ["web"]
    assert (await api.get("/jobs/web")).json()["Deployment"]["Version"] == 2
    versions = (await api.get("/jobs/web/versions")).json()
    assert [v["Version"] for v in versions] == [2, 1]
    scaled = await api.post("/jobs/web/scale", json={"Count": 5})
    assert scaled.status_code == 200 and scaled.json()["Count"] == 5
    assert scaled.json()["Version"] == 2  # Count alone is no new version
    reverted = await api.post("/jobs/web/revert", json={"Version": 1})
    assert reverted.json()["Version"] == 3 and reverted.json()["Task"]["Env"] is None
    tasks = (await api.get("/tasks", params={"job": "web"})).json()
    assert tasks and {t["Job"] for t in tasks} == {"web"}
    assert (await api.get("/tasks", params={"job": "none"})).json() == []
    stopped = await api.delete("/jobs/web")
    assert stopped.status_code == 200 and stopped.json()["Stopped"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/jobs", {**JOB, "Name": "Web!"}, 400, "Name must be"),
        ("post", "/jobs", {**JOB, "Count": -1}, 400, "Count"),
        ("post", "/jobs", {**JOB, "Task": {}}, 400, "Image"),
        ("post", "/jobs", {**JOB, "Bogus": 1}, 400, "Bogus"),
        ("post", "/jobs", {**JOB, "Update": {"Order": "random"}}, 400, "Order"),
        (
            "post",
            "/jobs",
            {**JOB, "Constraints": [{"Attribute": "zone", "Operator": "exists", "Value": "a"}]},
            400,
            "Constraints.0: Value must be left out for Operator 'exists'",
        ),
        (
            "post",
            "/jobs",
            {**JOB, "Task": {"Image": "x", "Constraints": [{"Attribute": "", "Operator": "="}]}},
            400,
            "Task.Constraints.0.Attribute: required",
        ),
        ("post", "/jobs", {**JOB, "Constraints": {"zone": "a"}}, 400, "Constraints"),
        ("get", "/jobs/nope", None, 404, "job nope not found"),
        ("get", "/jobs/nope/versions", None, 404, "job nope not found"),
        ("post", "/jobs/nope/scale", {"Count": 1}, 404, "job nope not found"),
        ("delete", "/jobs/nope", None, 404, "job nope not found"),
    ],
)
async def test_bad_job_requests_get_a_clear_4xx(
    api: httpx.AsyncClient, method: str, path: str, body: object, status: int, message: str
) -> None:
    kwargs = {"json": body} if body is not None else {}
    answer = await api.request(method.upper(), path, **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == status
    assert message in answer.json()["Message"]


async def test_bad_scale_and_revert_bodies(api: httpx.AsyncClient) -> None:
    await api.post("/jobs", json=JOB)
    assert (await api.post("/jobs/web/scale", json={"Count": -2})).status_code == 400
    assert (await api.post("/jobs/web/scale", content=b"nope")).status_code == 400
    missing = await api.post("/jobs/web/revert", json={"Version": 7})
    assert missing.status_code == 400 and "no version 7" in missing.json()["Message"]


async def test_the_openapi_document_describes_the_jobs_routes(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    post = doc["paths"]["/jobs"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/Job-Input")  # its sizes may be strings ("1GiB")
    assert set(post["responses"]) == {
        "201",
        "400",
        "401",
        "403",
        "503",
    }  # no 422; 503: etcd or no leader
    created = post["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"].endswith("/JobAnswer")
    assert "Deployment" in doc["components"]["schemas"]["JobAnswer"]["properties"]
    scale = doc["paths"]["/jobs/{name}/scale"]["post"]["responses"]
    assert set(scale) == {"200", "400", "401", "403", "404", "503"}
    assert "422" not in json.dumps(doc["paths"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]


async def test_constraints_are_accepted_and_shown(api: httpx.AsyncClient) -> None:
    zone = {"Attribute": "zone", "Operator": "in", "Value": ["a", "b"]}
    created = await api.post("/tasks", json=book_event(Constraints=[zone], DistinctHosts=True))
    assert created.status_code == 201
    assert created.json()["Constraints"] == [zone] and created.json()["DistinctHosts"] is True
    plain = (await api.post("/tasks", json=book_event())).json()  # the book's body, as it was
    assert (plain["Constraints"], plain["DistinctHosts"]) == (None, False)
    job = await api.post("/jobs", json={**JOB, "Constraints": [zone], "DistinctHosts": True})
    assert job.status_code == 201
    assert (job.json()["Constraints"], job.json()["DistinctHosts"]) == ([zone], True)
    again = await api.post("/jobs", json={**JOB, "Constraints": [zone], "DistinctHosts": True})
    assert again.json()["Version"] == 1
    zone_c = {**zone, "Value": "c"}
    moved = await api.post("/jobs", json={**JOB, "Constraints": [zone_c], "DistinctHosts": True})
    assert moved.json()["Version"] == 2  # placement is part of a version


async def test_the_openapi_job_schema_shows_placement(api: httpx.AsyncClient) -> None:
    schemas = (await api.get("/openapi.json")).json()["components"]["schemas"]
    for model in ("Job-Input", "TaskTemplate-Input", "Job-Output", "TaskTemplate-Output"):
        fields = schemas[model]["properties"]
        assert {"Constraints", "DistinctHosts"} <= set(fields), model
        assert fields["DistinctHosts"] == {
            "type": "boolean",
            "default": False,
            "title": "Distincthosts",
        }
        items = fields["Constraints"]["anyOf"][0]["items"]
        assert items["$ref"].endswith("/Constraint")
    constraint = schemas["Constraint"]
    assert constraint["required"] == ["Attribute", "Operator"]
    assert constraint["properties"]["Operator"]["enum"] == ["=", "!=", "in", "not in", "exists"]
