"""The nodes API over HTTP (in-process): joins, heartbeats, drains, eligibility,
removal; every bad request a 4xx with a Message; the OpenAPI document says so."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from cube.clock import ManualClock
from cube.manager.api import create_app
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.scheduler import Epvm
from cube.transport import InProcessTransport, lifespan

pytestmark = pytest.mark.anyio
TOKEN = {"Authorization": "Bearer s3cret"}
JOIN = {"Name": "edge-1", "Api": "127.0.0.1:1", "Labels": {"zone": "a"}}


async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    manager = Manager([], Epvm(), MemoryBackend(), settings, clock=ManualClock())
    app = create_app(manager)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield client


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(Settings(join_token="s3cret")):
        yield client


async def test_join_heartbeat_drain_eligibility_and_removal(api: httpx.AsyncClient) -> None:
    joined = await api.post("/nodes/register", json=JOIN, headers=TOKEN)
    assert joined.status_code == 201
    assert joined.json() == {"Name": "edge-1", "Status": "down", "HeartbeatInterval": 1.0}
    node = (await api.get("/nodes/edge-1")).json()
    assert (
        node["Api"] == "http://127.0.0.1:1" and node["Joined"] and node["Labels"] == {"zone": "a"}
    )
    assert [n["Name"] for n in (await api.get("/nodes")).json()] == ["edge-1"]
    beat = await api.post("/nodes/edge-1/heartbeat", headers=TOKEN)
    assert beat.status_code == 200 and beat.json()["HeartbeatInterval"] == 1.0

    drained = await api.post("/nodes/edge-1/drain", json={"Deadline": 60})
    assert drained.status_code == 200
    assert not drained.json()["Eligible"] and drained.json()["DrainDeadline"]
    eligible = await api.post("/nodes/edge-1/eligibility", json={"Eligible": True})
    assert eligible.json()["Eligible"] and not eligible.json()["Draining"]

    assert (await api.delete("/nodes/edge-1")).status_code == 204  # down: never answered
    assert (await api.get("/nodes/edge-1")).status_code == 404
    gone = await api.post("/nodes/edge-1/heartbeat", headers=TOKEN)
    assert gone.status_code == 404 and "join again" in gone.json()["Message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("POST", "/nodes/register", JOIN, {}, 401, "wrong join token"),
        ("POST", "/nodes/register", JOIN, {"Authorization": "Bearer no"}, 401, "wrong join"),
        ("POST", "/nodes/register", JOIN, {"Authorization": "s3cret"}, 401, "wrong join"),
        ("POST", "/nodes/register", {"Name": "a b", "Api": "h:1"}, TOKEN, 400, "Name"),
        ("POST", "/nodes/register", {"Name": "a", "Api": "h:99999"}, TOKEN, 400, "port"),
        ("POST", "/nodes/register", {"Name": "a", "Api": "h:1,h:2"}, TOKEN, 400, "one address"),
        ("POST", "/nodes/register", {"Api": "h:1"}, TOKEN, 400, "Name"),
        ("POST", "/nodes/ghost/heartbeat", None, {}, 401, "wrong join token"),
        ("GET", "/nodes/ghost", None, {}, 404, "node ghost not found"),
        ("POST", "/nodes/ghost/drain", None, {}, 404, "node ghost not found"),
        ("POST", "/nodes/ghost/eligibility", {"Eligible": True}, {}, 404, "not found"),
        ("DELETE", "/nodes/ghost", None, {}, 404, "node ghost not found"),
    ],
)
async def test_bad_node_requests_get_a_4xx_with_a_message(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    answer = await api.request(method, path, json=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["Message"]
    assert [n["Name"] for n in (await api.get("/nodes")).json()] == []  # nothing joined


async def test_bad_drain_and_eligibility_bodies(api: httpx.AsyncClient) -> None:
    await api.post("/nodes/register", json=JOIN, headers=TOKEN)
    for path, body in [
        ("/nodes/edge-1/drain", {"Deadline": -1}),
        ("/nodes/edge-1/drain", {"Deadline": "soon"}),
        ("/nodes/edge-1/drain", {"Deadlin": 5}),
        ("/nodes/edge-1/eligibility", {}),
        ("/nodes/edge-1/eligibility", {"Eligible": "perhaps"}),
    ]:
        answer = await api.post(path, json=body)
        assert answer.status_code == 400, (path, body, answer.text)
        assert answer.json()["Message"]
    assert (await api.get("/nodes/edge-1")).json()["Eligible"]  # nothing changed


async def test_a_manager_without_a_join_token_takes_no_joins() -> None:
    async for api in serve(Settings()):
        answer = await api.post("/nodes/register", json=JOIN, headers=TOKEN)
        assert answer.status_code == 403 and "--join-token" in answer.json()["Message"]


async def test_the_openapi_document_describes_the_node_routes(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    paths = doc["paths"]
    register = paths["/nodes/register"]["post"]
    assert set(register["responses"]) == {"201", "400", "401", "403", "503"}
    body = register["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/Registration")
    # A name in the path cannot be malformed: no 400 where there is no body.
    heartbeat = paths["/nodes/{name}/heartbeat"]["post"]["responses"]
    assert set(heartbeat) == {"200", "401", "403", "404", "503"}
    assert "JoinToken" in doc["components"]["securitySchemes"]
    assert register["security"] == [{"JoinToken": []}]
    drain = paths["/nodes/{name}/drain"]["post"]["responses"]
    assert set(drain) == {"200", "400", "401", "403", "404", "503"}
    remove = paths["/nodes/{name}"]["delete"]["responses"]
    assert set(remove) == {"204", "401", "403", "404", "409", "503"}
    assert "422" not in json.dumps(paths)
