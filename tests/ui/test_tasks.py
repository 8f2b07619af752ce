"""Tasks in a real browser: a task's page follows its output live; the task list
filters and pages a thousand; a task that fits nowhere says why."""

from __future__ import annotations

import docker
import pytest
from playwright.sync_api import Page, expect

from tests.support import task_event, wait_for
from tests.ui.support import Cluster, login, open_ui, shot

pytestmark = pytest.mark.docker

# Prints one line, then a second only once the test says so (by a file it makes in
# the container): the second line is printed after the page is open, whatever the pace.
WAITER = (
    "echo first line; while [ ! -e /tmp/go ]; do sleep 0.1; done; "
    "echo printed after the page opened; sleep 600"
)
TOO_BIG = 1 << 50  # bytes of memory: no node has them


def test_a_tasks_page_follows_its_output(cluster: Cluster, page: Page) -> None:
    event = task_event("cube/busybox:latest", Name="waiter", Cmd=["sh", "-c", WAITER])
    task_id = cluster.client.post("/tasks", json=event).json()["ID"]
    task = wait_for(
        lambda: (t := cluster.client.get(f"/tasks/{task_id}").json())["State"] == 2 and t,
        30,
        what="the task Running",
    )
    open_ui(page, cluster, f"/ui/#/tasks/{task_id}")
    login(page, cluster.token)
    logs = page.get_by_test_id("task-logs")
    expect(logs).to_contain_text("first line")
    expect(page.get_by_test_id("task-state")).to_have_text("Running")
    expect(page.get_by_test_id("task-placement")).to_contain_text(f"chose {task['Node']}")
    docker.from_env().containers.get(task["ContainerID"]).exec_run(["touch", "/tmp/go"])
    expect(logs).to_contain_text("printed after the page opened")
    shot(page, "task")
    # Stopped from its page: the state follows without a reload.
    page.get_by_test_id("task-stop").click()
    expect(page.get_by_test_id("task-state")).to_have_text("Completed")


def test_the_task_list_filters_and_pages_a_crowd(cluster: Cluster, page: Page) -> None:
    # A thousand: the list shows a page of them, and stays quick (no timing asserted).
    crowd = [task_event("cube/busybox:latest", Name="crowd", Memory=TOO_BIG) for _ in range(1000)]
    assert cluster.client.post("/tasks", json=crowd).status_code == 201
    open_ui(page, cluster, "/ui/#/tasks")
    login(page, cluster.token)
    page.get_by_test_id("filter-state").select_option("Pending")
    page.get_by_test_id("filter-text").fill("crowd")
    expect(page.get_by_test_id("task-total")).to_contain_text("1000 of")
    rows = page.get_by_test_id("task-row")
    expect(rows).to_have_count(50)
    expect(page.get_by_test_id("page")).to_contain_text("page 1 of 20")
    for _ in range(19):
        page.get_by_test_id("page-next").click()
    expect(page.get_by_test_id("page")).to_contain_text("page 20 of 20")
    expect(rows).to_have_count(50)
    expect(page.locator('[data-testid="task-row"]:not([data-state="Pending"])')).to_have_count(0)
    assert "state=Pending" in page.url  # the filter is in the address: a link keeps it
    shot(page, "tasks")
    # One of them: it waits, and says which resource ran out on how many nodes.
    rows.first.get_by_role("link").first.click()
    reason = page.get_by_test_id("task-reason")
    expect(reason).to_contain_text(f"{len(cluster.workers)} nodes lack memory")
    expect(page.get_by_test_id("task-placement")).to_contain_text("none fits")
    expect(page.get_by_test_id("task-logs-state")).to_contain_text("not started")
    shot(page, "task-pending")
