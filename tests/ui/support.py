"""Helpers for the web UI's tests: the cluster they share, screenshots, and the UI's
contract (its ``data-testid`` attributes) in one place.

The UI is the manager's static pages at ``/ui/``. With tokens on it first shows a login
form: ``[data-testid=login-token]`` and ``[data-testid=login-submit]``. The overview
then lists one ``[data-testid=node-row]`` per node, each with ``data-node=<name>``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page

from cube.task import State
from tests.support import ROOT, ManagerProcess, WorkerProcess, wait_for

SCREENSHOTS_ENV = "CUBE_UI_SCREENSHOTS"
DEFAULT_SCREENSHOTS = ROOT / "tests" / "ui" / "screenshots"
# Every screenshot this session saved, for the summary at its end.
SAVED: list[Path] = []
# Console errors a test expects (patterns), which then do not fail it.
ALLOWED_ERRORS = pytest.StashKey[list[str]]()


@dataclass
class Cluster:
    """A real manager with tokens on and the real workers that joined it."""

    url: str  # the manager's base URL, e.g. http://127.0.0.1:PORT
    token: str  # its management token
    client: httpx.Client  # on ``url``, sending the management token
    manager: ManagerProcess
    workers: list[WorkerProcess] = field(default_factory=list)

    def nodes(self) -> list[dict[str, Any]]:
        answer = self.client.get("/nodes")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def node_names(self) -> list[str]:
        return [str(node["Name"]) for node in self.nodes()]

    def settled(self) -> bool:
        """No container starting or stopping: every job that runs has its Count of
        tasks Running, and no task is on its way to or from Running. Chromium aborts
        the loads it is waiting on (net::ERR_NETWORK_CHANGED) when an interface comes
        or goes, and Docker adds or removes one for every container it starts or stops."""
        tasks = self.client.get("/tasks").json()
        for job in self.client.get("/jobs").json():
            running = [t for t in tasks if t["Job"] == job["Name"] and _runs(t)]
            if not job["Stopped"] and len(running) < job["Count"]:
                return False
        return not any(_in_transit(t) for t in tasks)

    def read_token(self, name: str = "ui") -> str:
        """A new read token's secret (``POST /tokens``, docs/api.md)."""
        made = self.client.post("/tokens", json={"Role": "read", "Name": name})
        assert made.status_code == 201, made.text
        return str(made.json()["Secret"])


def screenshots_dir() -> Path:
    """Where screenshots go: ``$CUBE_UI_SCREENSHOTS``, else tests/ui/screenshots/ in
    this checkout (ignored by git; each run overwrites what it saves again)."""
    configured = os.environ.get(SCREENSHOTS_ENV)
    return Path(configured) if configured else DEFAULT_SCREENSHOTS


def shot(page: Page, name: str) -> Path:
    """Save a full-page PNG of ``page`` as ``NAME.png`` in :func:`screenshots_dir`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "page"
    path = screenshots_dir() / f"{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    SAVED.append(path)
    return path


def _runs(task: dict[str, Any]) -> bool:
    return bool(task["State"] == State.RUNNING and task["DesiredState"] == State.RUNNING)


def _in_transit(task: dict[str, Any]) -> bool:
    """Placed and not yet Running, or Running and being stopped (a Pending task with a
    Reason waits for room: nothing starts for it)."""
    state, desired = task["State"], task["DesiredState"]
    return (
        state == State.SCHEDULED
        or (state == State.PENDING and not task["Reason"])
        or (state == State.RUNNING and desired != State.RUNNING)
    )


def open_ui(page: Page, cluster: Cluster, path: str = "/ui/") -> None:
    """Load a page of the UI once no container is starting or stopping (see
    :meth:`Cluster.settled`: the page's modules load in parallel, and a change of the
    host's interfaces mid-load fails them); fail at once, saying so, when the manager
    does not serve it."""
    wait_for(cluster.settled, 60, what="no container starting or stopping")
    url = f"{cluster.url}{path}"
    response = page.goto(url)
    assert response is not None, f"no response for {url}"
    assert response.ok, f"GET {url} answered {response.status}: {response.text()[:300]}"


def login(page: Page, token: str) -> None:
    """Fill the login form with ``token`` and submit it."""
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-submit").click()


def node_rows(page: Page) -> Locator:
    return page.get_by_test_id("node-row")


def node_row(page: Page, name: str) -> Locator:
    return page.locator(f'[data-testid="node-row"][data-node="{name}"]')


def allow_console_errors(request: pytest.FixtureRequest, pattern: str) -> None:
    """Console errors matching ``pattern`` are expected in this test: Chromium logs every
    4xx answer to a fetch as one, and a test that is refused on purpose (a wrong token)
    gets one. Every other error still fails it."""
    request.node.stash.setdefault(ALLOWED_ERRORS, []).append(pattern)
