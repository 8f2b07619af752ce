"""The CLI finds a cluster's address and token where `cube up` wrote them, and sends
the token only to that manager."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cube import clientconfig
from cube.clientconfig import ClientConfig
from cube.manager.client import ManagerClient


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CUBE_CONFIG", "CUBE_DATA_DIR", "CUBE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUBE_DATA_DIR", str(tmp_path))
    path = tmp_path / "client.json"
    ClientConfig(Manager="http://127.0.0.1:7000", Token="cube_abc").save(path)
    return path


def sent(address: str, token: str | None = None) -> dict[str, str | None]:
    """The Authorization each manager of ``address`` gets (each refuses but the last)."""
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[f"{request.url.host}:{request.url.port}"] = request.headers.get("Authorization")
        return httpx.Response(503 if len(seen) < len(address.split(",")) else 200, json=[])

    with ManagerClient(address, transport=httpx.MockTransport(handler), token=token) as client:
        client.nodes()
    return seen


def test_the_token_goes_to_the_manager_it_is_for(config: Path) -> None:
    assert config.stat().st_mode & 0o777 == 0o600
    for same in ("127.0.0.1:7000", "localhost:7000", "http://127.0.0.1:7000/"):
        assert list(sent(same).values()) == ["Bearer cube_abc"], same
    assert sent("127.0.0.1:7001") == {"127.0.0.1:7001": None}  # another manager: nothing
    assert sent("127.0.0.1:7000", token="mine") == {"127.0.0.1:7000": "Bearer mine"}


def test_a_config_naming_several_managers_gives_its_token_to_each(config: Path) -> None:
    """`Manager` may be a list; a manager it does not name, given with -m beside them,
    gets no token."""
    ClientConfig(Manager="http://127.0.0.1:7000,127.0.0.1:7002", Token="cube_abc").save(config)
    assert sent("127.0.0.1:7002,127.0.0.1:7001,localhost:7000") == {
        "127.0.0.1:7002": "Bearer cube_abc",
        "127.0.0.1:7001": None,
        "localhost:7000": "Bearer cube_abc",
    }


def test_cube_config_wins_and_a_broken_file_is_none(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.json"
    ClientConfig(Manager="https://m:1", Token="t2", TlsCa="/ca.pem").save(other)
    monkeypatch.setenv("CUBE_CONFIG", str(other))
    assert clientconfig.load() == ClientConfig("https://m:1", "t2", "/ca.pem")
    other.write_text("{not json")
    assert clientconfig.load() is None
    monkeypatch.setenv("CUBE_CONFIG", str(tmp_path / "missing.json"))
    assert clientconfig.load() is None
