"""The UI outlives its manager: stopped and started again, the page says it lost the
stream, reads everything again once the manager is back, and follows on, no reload.
(This manager keeps nothing: its event log starts again at 1, so only a fresh read
could be right.)"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support import task_event
from tests.ui.support import Cluster, allow_console_errors, login, node_rows, open_ui, shot

pytestmark = pytest.mark.docker


def test_the_page_follows_a_manager_that_restarted(
    cluster: Cluster, page: Page, request: pytest.FixtureRequest
) -> None:
    allow_console_errors(request, "ERR_CONNECTION_REFUSED")  # its tries while it is away
    open_ui(page, cluster, "/ui/#/tasks")
    login(page, cluster.token)
    live = page.locator("#live")
    expect(live).to_have_text("live")
    cluster.manager.stop()
    expect(live).not_to_have_text("live")
    cluster.manager.start().wait_ready(workers=len(cluster.workers))
    event = task_event("cube/busybox:latest", Name="after-restart", Cmd=["sleep", "600"])
    task_id = cluster.client.post("/tasks", json=event).json()["ID"]
    row = page.locator(f'[data-testid="task-row"][data-task="{task_id}"]')
    expect(row).to_have_attribute("data-state", "Running")
    expect(live).to_have_text("live")
    page.goto(f"{cluster.url}/ui/#/")
    expect(node_rows(page)).to_have_count(len(cluster.workers))
    shot(page, "reconnected")
