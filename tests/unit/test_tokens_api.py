"""API tokens over HTTP (in-process): every route the OpenAPI document lists, with no
token, a wrong one, a read token and a management token; making and revoking tokens."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cube.clock import ManualClock
from cube.manager.api import create_app
from cube.manager.auth import Tokens
from cube.manager.backend import MemoryBackend, SqliteBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.scheduler import Epvm
from cube.transport import InProcessTransport, lifespan

pytestmark = pytest.mark.anyio
MANAGEMENT = "the-management-token"
OPEN = {("/health", "get")}  # needs no token
JOINING = {("/nodes/register", "post"), ("/nodes/{name}/heartbeat", "post")}  # join token
FILL = {"{task_id}": "9b6b5b43-3c0a-4bd5-9c8d-22b2a6d3f4a1", "{name}": "web", "{token_id}": "x"}
QUERY = {"/events": "?follow=false"}  # streams: what is there, then the end


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(token=MANAGEMENT, join_token="join")
    manager = Manager([], Epvm(), MemoryBackend(), settings, clock=ManualClock())
    app = create_app(manager)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield client


def routes(doc: dict[str, dict[str, object]]) -> list[tuple[str, str, str]]:
    """(method, documented path, a concrete URL) for every operation."""
    found = []
    for path, operations in doc["paths"].items():
        url = path
        for hole, value in FILL.items():
            url = url.replace(hole, value)
        for method in operations:  # type: ignore[attr-defined]
            found.append((method, path, url + QUERY.get(path, "")))
    return found


async def test_every_route_needs_a_token_and_a_read_token_only_reads(
    api: httpx.AsyncClient,
) -> None:
    reader = (
        await api.post("/tokens", json={"Role": "read", "Name": "ci"}, headers=bearer(MANAGEMENT))
    ).json()["Secret"]
    doc = (await api.get("/openapi.json")).json()
    checked = 0
    for method, path, url in routes(doc):
        if (path, method) in OPEN | JOINING:
            continue
        body = {} if method in ("post", "put", "patch") else None
        for headers in ({}, bearer("wrong"), {"Authorization": "Basic abc"}):
            answer = await api.request(method, url, json=body, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.json()["Message"]
        as_reader = await api.request(method, url, json=body, headers=bearer(reader))
        as_admin = await api.request(method, url, json=body, headers=bearer(MANAGEMENT))
        assert as_admin.status_code not in (401, 403), (method, path, as_admin.text)
        # /tokens is for management tokens, but for any token's look at itself.
        if method == "get" and (not path.startswith("/tokens") or path == "/tokens/self"):
            assert as_reader.status_code not in (401, 403), (method, path, as_reader.text)
        else:
            assert as_reader.status_code == 403, (method, path, as_reader.text)
        checked += 1
    assert checked >= 20  # tasks, jobs, nodes and tokens routes
    assert (await api.get("/health")).status_code == 200  # open to supervisors
    # Joining workers present the join token, not an API token.
    join = {"Name": "w", "Api": "127.0.0.1:1"}
    assert (await api.post("/nodes/register", json=join, headers=bearer("join"))).status_code == 201
    refused = await api.post("/nodes/register", json=join, headers=bearer(MANAGEMENT))
    assert refused.status_code == 401


async def test_tokens_are_made_listed_revoked_and_stored_hashed(api: httpx.AsyncClient) -> None:
    made = await api.post("/tokens", json={"Role": "management"}, headers=bearer(MANAGEMENT))
    assert made.status_code == 201
    secret, token_id = made.json()["Secret"], made.json()["ID"]
    assert secret.startswith("cube_") and len(secret) > 40
    assert (await api.get("/tasks", headers=bearer(secret))).status_code == 200
    listed = (await api.get("/tokens", headers=bearer(secret))).json()
    assert [t["ID"] for t in listed] == [token_id]
    assert all(t["Secret"] is None for t in listed)
    assert (await api.delete(f"/tokens/{token_id}", headers=bearer(MANAGEMENT))).status_code == 204
    assert (await api.get("/tasks", headers=bearer(secret))).status_code == 401
    gone = await api.delete(f"/tokens/{token_id}", headers=bearer(MANAGEMENT))
    assert gone.status_code == 404
    bad = await api.post("/tokens", json={"Role": "root"}, headers=bearer(MANAGEMENT))
    assert bad.status_code == 400 and "Role" in bad.json()["Message"]


async def test_a_token_sees_itself(api: httpx.AsyncClient) -> None:
    """GET /tokens/self: what the web UI's login checks a token with (Nomad's
    /v1/acl/token/self); any role may, the manager's own token has no record."""
    made = await api.post(
        "/tokens", json={"Role": "read", "Name": "ui"}, headers=bearer(MANAGEMENT)
    )
    reader = made.json()
    seen = (await api.get("/tokens/self", headers=bearer(reader["Secret"]))).json()
    assert seen == {**reader, "Secret": None}
    own = (await api.get("/tokens/self", headers=bearer(MANAGEMENT))).json()
    assert (own["ID"], own["Role"], own["Secret"]) == ("management", "management", None)
    for headers in ({}, bearer("wrong")):
        refused = await api.get("/tokens/self", headers=headers)
        assert refused.status_code == 401 and refused.json()["Message"]


async def test_without_a_management_token_the_api_is_open() -> None:
    manager = Manager([], Epvm(), MemoryBackend(), clock=ManualClock())
    app = create_app(manager)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as api:
            assert (await api.get("/tasks")).status_code == 200
            assert (await api.get("/tokens")).status_code == 200
            anyone = (await api.get("/tokens/self")).json()
            assert (anyone["ID"], anyone["Role"]) == ("", "management")


async def test_only_a_hash_is_stored_and_tokens_are_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stolen database gives nobody a token: what is written is the SHA-256 of the
    secret; every presented token is checked with hmac.compare_digest."""
    backend = SqliteBackend(tmp_path / "manager.db")
    tokens = Tokens(backend, MANAGEMENT)
    made = await tokens.create("read", "ci")
    assert made.Secret is not None
    (stored,) = backend.load_tokens()
    assert stored.Hash == hashlib.sha256(made.Secret.encode()).hexdigest()
    assert made.Secret not in stored.model_dump_json()
    backend.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert made.Secret.encode() not in on_disk and MANAGEMENT.encode() not in on_disk

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    again = SqliteBackend(tmp_path / "manager.db")  # a restarted manager knows it
    try:
        assert Tokens(again, MANAGEMENT).role_of(made.Secret) == "read"
        assert compared and all(len(a) == len(b) == 64 for a, b in compared)
    finally:
        again.close()
