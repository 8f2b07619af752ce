"""The unit tests see no cluster of the developer's: a `cube up` running from this
checkout writes .cube/client.json, which the CLI and ManagerClient would otherwise read
(its address, its token, its CA) in tests that mean the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_client_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUBE_CONFIG", str(tmp_path / "no-client.json"))
    for name in ("CUBE_TOKEN", "CUBE_MANAGER", "CUBE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
