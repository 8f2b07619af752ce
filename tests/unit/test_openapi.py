"""The served OpenAPI documents are exact (cube.openapi): every route of both servers,
walked from the documents themselves, so a new route that forgets cannot land; and the
bodies the servers really answer, the book's included, validate against them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from cube.clock import ManualClock
from cube.manager.api import create_app as manager_app
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.openapi import install
from cube.runtime.simulated import SimulatedRuntime
from cube.scheduler import Epvm
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app as worker_app
from cube.worker.credentials import Credentials
from cube.worker.worker import Worker

pytestmark = pytest.mark.anyio
TOKEN, WORKER_TOKEN = "management", "worker"
# For supervisors: no token. A worker's /metrics neither: a scraper cannot hold the
# manager's secret for it; its listener (loopback, or mutual TLS) decides who reaches it.
OPEN = {"manager": {("get", "/health")}, "worker": {("get", "/health"), ("get", "/metrics")}}
SCHEMES = {"manager": {"Token", "JoinToken"}, "worker": {"WorkerToken"}}
Doc = dict[str, Any]


@pytest.fixture
async def manager() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(token=TOKEN, join_token="join")
    app = manager_app(Manager([], Epvm(), MemoryBackend(), settings, clock=ManualClock()))
    async with lifespan(app):
        transport = InProcessTransport(app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://m", headers=headers
        ) as client:
            yield client


@pytest.fixture
async def worker() -> AsyncIterator[httpx.AsyncClient]:
    node = Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    sampler = StatsSampler(interval=3600, task_count=node.running_count)
    app = worker_app(node, sampler, credentials=Credentials(WORKER_TOKEN))
    async with lifespan(app):
        transport = InProcessTransport(app)
        headers = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://w1", headers=headers
        ) as client:
            yield client


def operations(doc: Doc) -> list[tuple[str, str, Doc]]:
    return [
        (method, path, operation)
        for path, methods in doc["paths"].items()
        for method, operation in methods.items()
    ]


def refs(value: Any) -> list[str]:
    """Every $ref in a part of the document."""
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


ANY_STRING = ({"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]})


def malformable(operation: Doc) -> bool:
    """Whether some request to it can be malformed: it has a body, a required query
    parameter (it can be left out), or a parameter that is not just any string (a
    number, a flag, a UUID)."""
    return "requestBody" in operation or any(
        (p["in"] != "path" and p.get("required"))
        or {k: v for k, v in p["schema"].items() if k not in ("title", "description")}
        not in ANY_STRING
        for p in operation.get("parameters", [])
    )


NDJSON = "application/x-ndjson"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"  # GET /metrics: Prometheus' text


def check_document(doc: Doc, server: str) -> int:
    """The rules every route follows; returns how many operations were checked."""
    text = json.dumps(doc)
    assert '"422"' not in text and "HTTPValidationError" not in text
    components = doc["components"]["schemas"]
    for ref in refs(doc):  # every model referred to is there
        assert ref.removeprefix("#/components/schemas/") in components, ref
    # A generated client names each model's class by its title (openapi-python-client
    # does): two alike, and it drops one model with every route that uses it.
    titles = [schema.get("title", name) for name, schema in components.items()]
    assert len(titles) == len(set(titles)), sorted({t for t in titles if titles.count(t) > 1})
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == SCHEMES[server]
    assert all(s == {**s, "type": "http", "scheme": "bearer"} for s in schemes.values())
    checked = 0
    for method, path, operation in operations(doc):
        where = f"{server}: {method.upper()} {path}"
        answers = operation["responses"]
        for status, answer in answers.items():
            bodies = answer.get("content", {})
            if (method, path, status) == ("get", "/metrics", "200"):
                # Text for Prometheus, not a model: the one answer that is neither.
                assert bodies == {PROMETHEUS: {"schema": {"type": "string"}}}, where
                continue
            # JSON, or (a stream) one model per line.
            body = (bodies.get("application/json") or bodies.get(NDJSON) or {}).get("schema")
            if status.startswith("2") and status != "204":
                # A model (or models), never "any object": a generated client needs it.
                assert body is not None and refs(body), (where, status, body)
            elif status == "204":
                assert "content" not in answer, where
            else:
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (where, status)
        # A 400 exactly where a request can be malformed: none on a route whose only
        # input is a name in its path, which any string is.
        assert ("400" in answers) == malformable(operation), (where, sorted(answers))
        if "requestBody" in operation:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert refs(body), where
        if (method, path) in OPEN[server]:
            assert "security" not in operation and not set(answers) & {"401", "403"}, where
        else:  # guarded: it says by what, and that it answers 401 without it
            assert operation["security"] and "401" in answers, where
            assert {s for r in operation["security"] for s in r} <= set(schemes), where
        checked += 1
    return checked


async def test_the_manager_document_follows_the_rules(manager: httpx.AsyncClient) -> None:
    doc = (await manager.get("/openapi.json")).json()
    assert check_document(doc, "manager") >= 23
    paths = doc["paths"]
    # The cases the rules are for, spelt out.
    assert set(paths["/nodes/{name}/heartbeat"]["post"]["responses"]) == {
        "200",
        "401",
        "403",
        "404",
        "503",
    }
    assert set(paths["/nodes/{name}"]["delete"]["responses"]) == {
        "204",
        "401",
        "403",
        "404",
        "409",
        "503",
    }
    assert set(paths["/tasks/{task_id}"]["get"]["responses"]) == {
        *("200", "400", "401", "404", "503")
    }
    assert set(paths["/tokens"]["get"]["responses"]) == {"200", "401", "403", "503"}  # reads too
    assert set(paths["/jobs"]["get"]["responses"]) == {"200", "401", "503"}  # a read token reads
    post = paths["/tasks"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {r.rsplit("/", 1)[1] for r in refs(body)} == {"TaskEvent-Input"}
    assert len(body["anyOf"]) == 2  # one event, or an array of them


async def test_the_worker_document_follows_the_rules(worker: httpx.AsyncClient) -> None:
    doc = (await worker.get("/openapi.json")).json()
    assert check_document(doc, "worker") == 8  # + GET /tasks/{task_id}/logs, GET /metrics
    listing = doc["paths"]["/tasks"]["get"]["responses"]["200"]
    assert set(listing["content"]) == {"application/json", "application/x-ndjson"}
    assert set(listing["headers"]) == {"X-Cube-Epoch", "X-Cube-Version", "X-Cube-Complete"}
    assert listing["content"]["application/x-ndjson"]["schema"]["$ref"].endswith("/WatchLine")


def conforms(doc: Doc, method: str, path: str, answer: httpx.Response, line: Any = None) -> None:
    """The answer's body (or one NDJSON ``line`` of it) validates against the schema the
    document gives for its status and media type."""
    described = doc["paths"][path][method]["responses"][str(answer.status_code)]
    media = answer.headers["content-type"].split(";")[0]
    schema = described["content"][media]["schema"]
    validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
    body = answer.json() if line is None else line
    errors = [str(e) for e in validator.iter_errors(body)]
    assert not errors, (method, path, answer.status_code, errors[:3], body)


def book_event(**task: Any) -> Doc:
    """The book's TaskEvent body (chapter 5), as its clients send it."""
    return {
        "ID": "266592cd-960d-4091-981c-8c25c44b1018",
        "State": 2,
        "Timestamp": "2023-05-11T10:00:00Z",
        "Task": {
            "State": 1,
            "ID": "266592cd-960d-4091-981c-8c25c44b1019",
            "Name": "test-chapter-5-1",
            "Image": "strm/helloworld-http",
            **task,
        },
    }


async def test_what_the_manager_answers_is_what_its_document_says(
    manager: httpx.AsyncClient,
) -> None:
    doc = (await manager.get("/openapi.json")).json()
    task_id = book_event()["Task"]["ID"]
    job = {"Name": "web", "Count": 2, "Task": {"Image": "cube/http", "Memory": "64MiB"}}
    registration = {"Name": "w9", "Api": "127.0.0.1:9"}
    calls: list[tuple[str, str, str, Any]] = [
        ("post", "/tasks", "/tasks", book_event()),
        ("post", "/tasks", "/tasks", [book_event(ID="0d5a4a39-4f7e-4d5c-8c1b-1d0e6f3a2b10")]),
        ("get", "/tasks", "/tasks", None),
        ("get", "/tasks/{task_id}", f"/tasks/{task_id}", None),
        ("get", "/tasks/{task_id}/events", f"/tasks/{task_id}/events", None),
        ("post", "/jobs", "/jobs", job),
        ("get", "/jobs", "/jobs", None),
        ("get", "/jobs/{name}", "/jobs/web", None),
        ("get", "/jobs/{name}/versions", "/jobs/web/versions", None),
        ("post", "/jobs/{name}/scale", "/jobs/web/scale", {"Count": 3}),
        ("post", "/jobs/{name}/revert", "/jobs/web/revert", {"Version": 1}),
        ("delete", "/jobs/{name}", "/jobs/web", None),
        ("post", "/nodes/register", "/nodes/register", registration),
        ("post", "/nodes/{name}/heartbeat", "/nodes/w9/heartbeat", None),
        ("get", "/nodes", "/nodes", None),
        ("get", "/nodes/{name}", "/nodes/w9", None),
        ("post", "/nodes/{name}/eligibility", "/nodes/w9/eligibility", {"Eligible": False}),
        ("post", "/nodes/{name}/drain", "/nodes/w9/drain", {"Deadline": 60}),
        ("post", "/tokens", "/tokens", {"Role": "read", "Name": "ci"}),
        ("get", "/tokens", "/tokens", None),
        ("get", "/health", "/health", None),
        ("get", "/tasks/{task_id}", "/tasks/0d5a4a39-4f7e-4d5c-8c1b-1d0e6f3a2b11", None),
        ("post", "/jobs", "/jobs", {"Name": "Bad!"}),
        ("get", "/tasks/{task_id}", "/tasks/nope", None),
    ]
    statuses = []
    for method, path, url, body in calls:
        headers = {"Authorization": "Bearer join"} if "/nodes/register" in url else {}
        headers |= {"Authorization": "Bearer join"} if url.endswith("/heartbeat") else {}
        answer = await manager.request(method, url, json=body, headers=headers)
        conforms(doc, method, path, answer)
        statuses.append(answer.status_code)
    assert statuses[-3:] == [404, 400, 400] and all(s < 300 for s in statuses[:-3])
    refused = await manager.get("/tasks", headers={"Authorization": "Bearer wrong"})
    conforms(doc, "get", "/tasks", refused)
    assert refused.status_code == 401


async def test_what_the_worker_answers_is_what_its_document_says(
    worker: httpx.AsyncClient,
) -> None:
    doc = (await worker.get("/openapi.json")).json()
    task_id = book_event()["Task"]["ID"]
    created = await worker.post("/tasks", json=book_event())
    conforms(doc, "post", "/tasks", created)
    batch = [book_event(ID="0d5a4a39-4f7e-4d5c-8c1b-1d0e6f3a2b10")]
    conforms(doc, "post", "/tasks", await worker.post("/tasks", json=batch))
    listed = await worker.get("/tasks")
    conforms(doc, "get", "/tasks", listed)
    assert listed.headers["X-Cube-Complete"] == "1" and listed.headers["X-Cube-Epoch"]
    assert int(listed.headers["X-Cube-Version"]) >= 1
    conforms(doc, "get", "/tasks/{task_id}", await worker.get(f"/tasks/{task_id}"))
    conforms(doc, "get", "/stats", await worker.get("/stats"))
    conforms(doc, "get", "/health", await worker.get("/health"))
    stopped = await worker.delete(f"/tasks/{task_id}", params={"restartCount": 0})
    assert stopped.status_code == 204
    async with worker.stream("GET", "/tasks", params={"watch": True, "stats": 1}) as watch:
        first = json.loads(await anext(watch.aiter_lines()))
        conforms(doc, "get", "/tasks", watch, line=first)
    assert "Stats" in first and len(first["Tasks"]) == 2
    for bad in ("²", "-1", "x"):  # a digit to isdigit(), not to int(): it was a 500
        refused = await worker.delete(f"/tasks/{task_id}", params={"restartCount": bad})
        conforms(doc, "delete", "/tasks/{task_id}", refused)
        assert refused.status_code == 400
    done = await worker.post("/tasks", json={**book_event(), "State": State.COMPLETED})
    conforms(doc, "post", "/tasks", done)


def test_install_makes_any_app_exact() -> None:
    """The rules hold for a route that says nothing of them (a new route, say)."""
    app = FastAPI()
    install(app, guards={"Key": lambda method: {401: "no key", 403: f"not for {method}"}})
    key = HTTPBearer(scheme_name="Key", auto_error=False)

    @app.get("/things/{name}", dependencies=[Depends(key)])
    async def thing(name: str) -> None: ...

    @app.post("/counts")
    async def count(q: int) -> None: ...

    doc = app.openapi()
    assert set(doc["paths"]["/things/{name}"]["get"]["responses"]) == {"200", "401", "403"}
    assert set(doc["paths"]["/counts"]["post"]["responses"]) == {"200", "400"}
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["HTTPStatusCode", "Message"]
