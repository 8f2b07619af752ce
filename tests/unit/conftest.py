"""The unit tests see no cluster of the developer's: a `cube up` running from this
checkout writes .cube/client.json, which the CLI and ManagerClient would otherwise read
(its address, its token, its CA) in tests that mean the defaults."""

from __future__ import annotations

import pytest

# A file that is never there: the CLI then has no client config to read.
NO_CONFIG = "/nonexistent/cube-client.json"


@pytest.fixture(autouse=True)
def no_client_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBE_CONFIG", NO_CONFIG)
    for name in ("CUBE_TOKEN", "CUBE_MANAGER", "CUBE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
