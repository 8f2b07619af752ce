"""Jobs in a real browser: a job written in the editor is planned, then applied, and its
tasks turn Running on the page without a reload; scaling from the job page changes how
many run; a new version shows what changed, and a revert goes back."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support import wait_for
from tests.ui.support import Cluster, login, open_ui, shot

pytestmark = pytest.mark.docker

SPEC = """\
Name: hello
Count: 2
Task:
  Image: cube/busybox:latest
  Cmd: ["sh", "-c", "echo hello; sleep 600"]
Update:
  MaxParallel: 2
  MinHealthyTime: 1
"""


def running(page: Page) -> Locator:
    """The job page's tasks that show Running."""
    return page.locator('[data-testid="job-task"][data-state="Running"]')


def running_tasks(cluster: Cluster, job: str) -> list[dict[str, Any]]:
    tasks = cluster.client.get("/tasks", params={"job": job}).json()
    return [t for t in tasks if t["State"] == 2]


def test_a_job_from_the_editor_runs_and_scales_live(cluster: Cluster, page: Page) -> None:
    open_ui(page, cluster, "/ui/#/jobs/new")
    login(page, cluster.token)
    page.get_by_test_id("job-editor").fill(SPEC)
    apply = page.get_by_test_id("job-apply")
    expect(apply).to_be_disabled()  # nothing is applied unplanned
    page.get_by_test_id("job-plan").click()
    expect(page.get_by_test_id("plan-summary")).to_contain_text("Job hello, version 1: a new job")
    expect(page.get_by_test_id("plan-row")).to_have_count(2)
    assert cluster.client.get("/jobs/hello").status_code == 404  # a plan stores nothing
    shot(page, "job-plan")
    apply.click()
    # The job's page, its tasks turning Running as the events arrive: no reload.
    expect(page).to_have_url(f"{cluster.url}/ui/#/jobs/hello")
    expect(running(page)).to_have_count(2)
    assert len(running_tasks(cluster, "hello")) == 2

    page.get_by_test_id("job-scale-count").fill("4")
    page.get_by_test_id("job-scale").click()
    expect(running(page)).to_have_count(4)
    expect(page.get_by_test_id("job-count")).to_have_text("4")
    wait_for(lambda: len(running_tasks(cluster, "hello")) == 4, 30, what="4 running")
    shot(page, "job")
    page.get_by_test_id("job-scale-count").fill("1")
    page.get_by_test_id("job-scale").click()
    expect(running(page)).to_have_count(1)
    wait_for(lambda: len(running_tasks(cluster, "hello")) == 1, 30, what="1 running")

    # The jobs list says the same.
    page.goto(f"{cluster.url}/ui/#/jobs")
    row = page.locator('[data-testid="job-row"][data-job="hello"]')
    expect(row.get_by_test_id("job-running")).to_have_text("1")


def test_a_new_version_shows_its_changes_and_reverts(cluster: Cluster, page: Page) -> None:
    job = {
        "Name": "greet",
        "Count": 1,
        "Task": {"Image": "cube/busybox:latest", "Cmd": ["sh", "-c", "echo one; sleep 600"]},
        "Update": {"MinHealthyTime": 1},
    }
    assert cluster.client.post("/jobs", json=job).status_code == 201
    open_ui(page, cluster, "/ui/#/jobs/greet")
    login(page, cluster.token)
    expect(page.get_by_test_id("version-row")).to_have_count(1)
    # A new version from the editor, prefilled with the job as it is.
    page.get_by_test_id("job-edit").click()
    editor = page.get_by_test_id("job-editor")
    expect(editor).to_have_value(re.compile("echo one"))
    editor.fill(editor.input_value().replace("echo one", "echo two"))
    page.get_by_test_id("job-plan").click()
    expect(page.get_by_test_id("plan-summary")).to_contain_text("version 2: a new version")
    page.get_by_test_id("job-apply").click()
    expect(page.get_by_test_id("version-row")).to_have_count(2)
    diff = page.get_by_test_id("job-diff")
    expect(diff.locator(".del")).to_contain_text("echo one")
    expect(diff.locator(".add")).to_contain_text("echo two")
    shot(page, "job-versions")
    page.locator('[data-testid="job-revert"][data-version="1"]').click()
    expect(page.get_by_test_id("version-row")).to_have_count(3)
    current = cluster.client.get("/jobs/greet").json()
    assert current["Version"] == 3 and "echo one" in current["Task"]["Cmd"][2]
