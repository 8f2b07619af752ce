"""What the web UI needs from the manager, in-process: its pages served from the
package with no token, ``/`` sending a browser there, and the lists' X-Cube-Index,
from which GET /events gives every change the lists do not show yet."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from cube.clock import ManualClock
from cube.manager.api import create_app
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.scheduler import Epvm
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.ui import STATIC

pytestmark = pytest.mark.anyio
TOKEN = "ui-mgmt"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JOB = {"Name": "web", "Count": 2, "Task": {"Image": "cube/http:latest"}}


@pytest.fixture
async def manager() -> AsyncIterator[tuple[Manager, httpx.AsyncClient]]:
    m = Manager([], Epvm(), MemoryBackend(), Settings(token=TOKEN), clock=ManualClock())
    app = create_app(m)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield m, client


async def test_the_pages_are_served_without_a_token(
    manager: tuple[Manager, httpx.AsyncClient],
) -> None:
    _, api = manager
    for path in ("/", "/ui"):
        moved = await api.get(path)
        assert (moved.status_code, moved.headers["location"]) == (307, "/ui/")
    page = await api.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Everything the page loads is there, the modules it imports too, from the package.
    wanted = re.findall(r'(?:href|src)="([^":]+)"', page.text)
    modules = ["js/app.js"]
    seen = set()
    while modules:
        module = modules.pop()
        if module in seen:
            continue
        seen.add(module)
        text = (STATIC / module).read_text()
        base = module.rsplit("/", 1)[0]
        for imported in re.findall(r'from "(\.[^"]+)"', text):
            parts = f"{base}/{imported}".split("/")
            resolved: list[str] = []
            for part in parts:
                if part == "..":
                    resolved.pop()
                elif part != ".":
                    resolved.append(part)
            modules.append("/".join(resolved))
    assert "vendor/js-yaml.mjs" in seen and "js/views/task.js" in seen
    for asset in {*wanted, *seen}:
        answer = await api.get(f"/ui/{asset}")
        assert answer.status_code == 200, asset
    assert (await api.get("/ui/nope.js")).status_code == 404
    # The pages are no part of the API: the document does not list them.
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


async def test_health_says_a_token_is_wanted(manager: tuple[Manager, httpx.AsyncClient]) -> None:
    _, api = manager
    assert (await api.get("/health")).json()["Tokens"] is True
    assert (await api.get("/tasks")).status_code == 401


async def test_the_lists_index_resumes_the_event_stream_with_nothing_missed(
    manager: tuple[Manager, httpx.AsyncClient],
) -> None:
    m, api = manager
    await m.submit_many([TaskEvent(State=State.RUNNING, Task=Task(Image="x"))])
    assert (await api.post("/jobs", json=JOB, headers=BEARER)).status_code == 201
    await m.events.flush()
    lists = {path: await api.get(path, headers=BEARER) for path in ("/tasks", "/nodes", "/jobs")}
    indexes = {path: int(answer.headers["X-Cube-Index"]) for path, answer in lists.items()}
    assert set(indexes.values()) == {m.events.last} and m.events.last > 0
    # A change after the lists were read comes after their index.
    (late,) = await m.submit_many([TaskEvent(State=State.RUNNING, Task=Task(Image="late"))])
    assert str(late.ID) not in {t["ID"] for t in lists["/tasks"].json()}
    since = await api.get(
        "/events", params={"follow": "false", "index": indexes["/tasks"]}, headers=BEARER
    )
    keys = [json.loads(line)["Key"] for line in since.text.splitlines()]
    assert str(late.ID) in keys
    # The OpenAPI document names the header on each list.
    paths = (await api.get("/openapi.json")).json()["paths"]
    for path in ("/tasks", "/nodes", "/jobs"):
        assert "X-Cube-Index" in paths[path]["get"]["responses"]["200"]["headers"], path
