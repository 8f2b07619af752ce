"""The overview in a real browser: every node the manager knows is listed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support import task_event
from tests.ui.support import Cluster, login, node_row, node_rows, open_ui, shot

pytestmark = pytest.mark.docker


def test_overview_lists_every_node(cluster: Cluster, page: Page) -> None:
    names = cluster.node_names()
    assert sorted(names) == sorted(w.name for w in cluster.workers)
    open_ui(page, cluster)
    login(page, cluster.token)  # tokens are on: the UI asks for one first
    expect(node_rows(page)).to_have_count(len(names))
    for name in names:
        expect(node_row(page, name)).to_be_visible()
    shot(page, "overview")


def test_the_overview_follows_the_cluster_live(cluster: Cluster, page: Page) -> None:
    open_ui(page, cluster)
    login(page, cluster.token)
    expect(node_rows(page)).to_have_count(len(cluster.workers))
    running = page.locator('[data-testid="task-count"][data-state="Running"] .tile-value')
    before = int(running.inner_text())
    event = task_event("cube/busybox:latest", Name="live", Cmd=["sleep", "600"])
    task_id = cluster.client.post("/tasks", json=event).json()["ID"]
    # The event stream brings it: its events, the count, the node's tasks. No reload.
    row = page.locator('[data-testid="event-row"]', has_text=task_id[:8])
    expect(row.filter(has_text="TaskRunning")).to_have_count(1)
    expect(running).to_have_text(str(before + 1))
    node = cluster.client.get(f"/tasks/{task_id}").json()["Node"]
    tasks_there = cluster.client.get(f"/nodes/{node}").json()["TaskCount"]
    expect(node_row(page, node).get_by_test_id("node-tasks")).to_have_text(str(tasks_there))
    shot(page, "overview-live")
