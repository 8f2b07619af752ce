"""Fixtures for the web UI's tests: a real cluster, and Debian's chromium driven headless
by Playwright (docs/testing.md, "The UI tests").

- ``cluster`` (one per module): a manager with tokens on and three workers that joined
  it, all real processes on loopback; stopped afterwards, their containers removed.
- ``browser`` (one for the whole tests/ui package): /usr/bin/chromium through
  Playwright's sync API. Package-scoped rather than session-scoped on purpose: while
  Playwright's sync API is alive the thread counts as running an asyncio loop, so
  ``asyncio.run`` (the bench and chaos tests after these) would fail until it stops.
- ``page`` (one per test): a fresh context and page. Every console message of type
  "error" and every uncaught exception on its pages fails the test; a failing test
  leaves a screenshot ``<test>-failed.png``."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    WebError,
    expect,
    sync_playwright,
)

from tests.support import (
    WorkerProcess,
    manager_process,
    remove_containers,
    worker_process,
)
from tests.ui.support import ALLOWED_ERRORS, SAVED, Cluster, screenshots_dir, shot

CHROMIUM = "/usr/bin/chromium"
WORKERS = 3
# Long enough for a loaded CI machine; a wait that ends early costs nothing.
TIMEOUT_MS = 15_000

CONSOLE_ERRORS = pytest.StashKey[list[str]]()
PAGE = pytest.StashKey[Page]()
CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager with a management token (and a join token) and WORKERS workers that
    joined it, plain HTTP on loopback; every node ready before the tests start."""
    tmp = tmp_path_factory.mktemp("ui-cluster")
    token, join = f"ui-mgmt-{secrets.token_hex(8)}", f"ui-join-{secrets.token_hex(8)}"
    # Names of their own: another run on the same engine must not see these containers.
    prefix = f"ui-{secrets.token_hex(3)}"
    manager = manager_process(tmp, [], "--token", token, "--join-token", join)
    workers: list[WorkerProcess] = []
    client: httpx.Client | None = None
    try:
        manager.start().wait_ready()
        for i in range(1, WORKERS + 1):
            joins = ("--join", f"127.0.0.1:{manager.port}", "--join-token", join)
            worker = worker_process(tmp, *joins, name=f"{prefix}-{i}")
            workers.append(worker)
            worker.start()
        for worker in workers:
            worker.wait_ready()
        manager.wait_ready(workers=WORKERS)
        client = httpx.Client(base_url=manager.url, headers=manager.headers, timeout=10)
        yield Cluster(manager.url, token, client, manager, workers)
    finally:
        if client is not None:
            client.close()
        for worker in workers:
            worker.stop()
        manager.stop()
        for worker in workers:
            remove_containers(worker.name)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless (scripts/setup.sh installs it; never `playwright
    install`). Root has no user namespaces for chromium's sandbox: --no-sandbox then."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: scripts/setup.sh installs Debian's chromium")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a context of its own; console errors and uncaught exceptions on any of
    the context's pages fail the test (listed) when it ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            errors.append(
                f"console error: {message.text} "
                f"({where['url']}:{where['lineNumber']}:{where['columnNumber']})"
            )

    def on_error(error: WebError) -> None:
        failure = error.error  # its stack starts with its name and message
        errors.append(f"uncaught: {failure.stack or f'{failure.name}: {failure.message}'}")

    context.on("console", on_console)
    context.on("weberror", on_error)
    opened = context.new_page()
    request.node.stash[CONSOLE_ERRORS] = errors
    request.node.stash[PAGE] = opened
    try:
        yield opened
    finally:
        context.close()
    allowed = request.node.stash.get(ALLOWED_ERRORS, [])
    errors[:] = [e for e in errors if not any(re.search(p, e) for p in allowed)]
    # A test that failed already lists these in its failure (pytest_runtest_call).
    if errors and not request.node.stash.get(CALL_FAILED, False):
        pytest.fail("errors in the browser:\n" + "\n".join(errors), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A failing UI test gets a screenshot of its page, and the page's errors, in its
    report."""
    try:
        return (yield)
    except BaseException as failure:
        item.stash[CALL_FAILED] = True
        page = item.stash.get(PAGE, None)
        if page is not None and not page.is_closed():
            with contextlib.suppress(Exception):  # the report matters more than the picture
                failure.add_note(f"screenshot: {shot(page, f'{item.name}-failed')}")
        errors = item.stash.get(CONSOLE_ERRORS, [])
        if errors:
            failure.add_note("errors in the browser:\n" + "\n".join(errors))
        raise


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SAVED:
        where = screenshots_dir()
        shown = Path(os.path.relpath(where)) if where.is_relative_to(Path.cwd()) else where
        terminalreporter.write_line(f"UI screenshots: {len(SAVED)} saved in {shown}/")
