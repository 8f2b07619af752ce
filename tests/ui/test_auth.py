"""Logging in to the UI in a real browser: the management token gets in, a wrong one is
refused and kept out, and a read token sees everything but no control that writes."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support import task_event
from tests.ui.support import (
    Cluster,
    allow_console_errors,
    login,
    node_rows,
    open_ui,
    shot,
)

pytestmark = pytest.mark.docker
JOB = {"Name": "ro", "Count": 1, "Task": {"Image": "cube/busybox:latest", "Cmd": ["sleep", "600"]}}


def test_a_wrong_token_is_refused(
    cluster: Cluster, page: Page, request: pytest.FixtureRequest
) -> None:
    allow_console_errors(request, "status of 401")  # the refusal itself, and only it
    open_ui(page, cluster)
    login(page, "not-a-token")
    expect(page.get_by_test_id("login-error")).to_contain_text("unknown token")
    expect(node_rows(page)).to_have_count(0)
    shot(page, "login-refused")
    # Kept nowhere: a reload asks again.
    page.reload()
    expect(page.get_by_test_id("login-token")).to_be_visible()
    login(page, cluster.token)
    expect(node_rows(page)).to_have_count(len(cluster.workers))
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-token")).to_be_visible()


def test_a_read_token_sees_no_write_controls(cluster: Cluster, page: Page) -> None:
    assert cluster.client.post("/jobs", json=JOB).status_code == 201
    task = cluster.client.post(
        "/tasks", json=task_event("cube/busybox:latest", Name="ro-task", Cmd=["sleep", "600"])
    )
    task_id = task.json()["ID"]
    open_ui(page, cluster)
    login(page, cluster.read_token("ui-read"))
    expect(node_rows(page)).to_have_count(len(cluster.workers))
    expect(page.get_by_test_id("who")).to_contain_text("read-only")
    for route, loaded in (
        ("#/", "node-row"),
        ("#/jobs", "job-row"),
        ("#/jobs/ro", "job-summary"),
        ("#/tasks", "task-row"),
        (f"#/tasks/{task_id}", "task-details"),
    ):
        page.goto(f"{cluster.url}/ui/{route}")
        expect(page.get_by_test_id(loaded).first).to_be_visible()
        expect(page.locator("[data-write]")).to_have_count(0)
    shot(page, "read-only-task")
    # The management token on the same pages has them.
    page.get_by_test_id("logout").click()
    login(page, cluster.token)
    page.goto(f"{cluster.url}/ui/#/jobs/ro")
    expect(page.get_by_test_id("job-scale")).to_be_visible()
    expect(page.get_by_test_id("job-stop")).to_be_visible()
