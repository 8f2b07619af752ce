"""schemathesis against real `cube` processes: every operation of both served OpenAPI
documents, with tokens, fuzzed with valid and invalid input; no answer may be a 5xx,
carry a status code the document does not list, or a body or header off its schema.

Bounded and reproducible: a fixed number of examples per operation, generated
deterministically. The workers run the simulated runtime (``--runtime simulated``), so
the tasks a fuzzer submits start no container; the test checks none was made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import ManagerProcess, WorkerProcess, containers_of

pytestmark = pytest.mark.timeout(600)

ST = Path(sys.executable).with_name("st")
TOKEN, JOIN, WORKER_TOKEN = "fuzz-management", "fuzz-join", "fuzz-worker"
EXAMPLES = 20  # per operation and phase: a few minutes for both servers on a CI machine
# Left out: positive_data_acceptance and negative_data_rejection, as the models check
# more than JSON Schema can say (Env entries are KEY=VALUE, a deadline is longer than a
# minimum...) and take more than they document (pydantic reads 0 as false); and
# use_after_free, as a stopped task stays (Completed) to be looked at.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",  # every guarded route refuses a missing or wrong token
    "missing_required_header",
    "unsupported_method",  # 405, with an Allow header
    "allow_header_conformance",
)
# In the file, not on the command line, where they would override an operation's own.
SETTINGS = "\n".join(
    (
        "[generation]",
        f"max-examples = {EXAMPLES}",
        "deterministic = true",
        "[checks]",
        "enabled = false",
        *(f"{check}.enabled = true" for check in CHECKS),
        "",
    )
)
OPTIONS = ("--workers", "1", "--request-timeout", "20", "--no-color")
SIMULATED = ("--runtime", "simulated", "--token", WORKER_TOKEN)


def toml(value: object) -> str:
    """A TOML value (JSON's strings, numbers, booleans and arrays are TOML's)."""
    return json.dumps(value)


def fuzz(url: str, tmp: Path, config: str) -> None:
    """Run schemathesis on ``url``'s document; fail with its report unless all passed."""
    path = tmp / "schemathesis.toml"
    path.write_text(SETTINGS + config)
    run = subprocess.run(
        [str(ST), "--config-file", str(path), "run", f"{url}/openapi.json", *OPTIONS],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=540,
    )
    report = run.stdout + run.stderr
    print(report)  # shown with -s, or when the test fails
    assert run.returncode == 0, report[-20_000:]
    operations = sum(len(ops) for ops in httpx.get(f"{url}/openapi.json").json()["paths"].values())
    assert f"Tested: {operations}\n" in report, report[-5_000:]  # every operation, none skipped


def test_the_manager_answers_every_fuzzed_request_as_documented(
    tmp_path: Path,
    workers: Callable[..., WorkerProcess],
    managers: Callable[..., ManagerProcess],
) -> None:
    worker = workers(*SIMULATED)
    manager = managers(
        [worker], "--token", TOKEN, "--join-token", JOIN, "--worker-token", WORKER_TOKEN
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Something for the fuzzer to find: a job, a task, a token, the node.
    job = {"Name": "web", "Count": 1, "Task": {"Image": "cube/busybox:latest"}}
    assert httpx.post(f"{manager.url}/jobs", json=job, headers=auth).status_code == 201
    event = {"State": 2, "Task": {"Image": "cube/busybox:latest"}}
    task = httpx.post(f"{manager.url}/tasks", json=event, headers=auth).json()
    made = httpx.post(f"{manager.url}/tokens", json={"Role": "read"}, headers=auth).json()
    node = httpx.get(f"{manager.url}/nodes", headers=auth).json()[0]["Name"]
    fuzz(
        manager.url,
        tmp_path,
        f"""
[auth.openapi.Token]
bearer = {toml(TOKEN)}
[auth.openapi.JoinToken]
bearer = {toml(JOIN)}

[dictionaries.names]
values = {toml(["web", node])}
[dictionaries.tasks]
values = {toml([task["ID"]])}
[dictionaries.tokens]
values = {toml([made["ID"]])}
# A joining worker's address: one nobody answers at, so the manager reaches out to no
# address the fuzzer made up.
[dictionaries.nowhere]
values = ["127.0.0.1:9"]

[parameters]
"path.name" = {{ dictionary = "names", probability = 0.5 }}
"path.task_id" = {{ dictionary = "tasks", probability = 0.5 }}
"path.token_id" = {{ dictionary = "tokens", probability = 0.5 }}
"body.Api" = {{ dictionary = "nowhere", probability = 1.0 }}

# /nodes/register is also /nodes/{{name}} for a node of that name: a 405 there rightly
# allows GET and DELETE too, which the check, reading the paths apart, does not expect.
[[operations]]
include-path = "/nodes/register"
checks.allow_header_conformance.enabled = false

# So is /tokens/self (Nomad's token/self) also /tokens/{{token_id}}: a 405 there rightly
# allows the DELETE of a token of that ID too.
[[operations]]
include-path = "/tokens/self"
checks.allow_header_conformance.enabled = false

# A followed event stream ends only when the manager stops (tests/unit/test_events.py
# and tests/integration/test_events.py follow it): what is there, then the end.
[[operations]]
include-name = "GET /events"
parameters = {{ "query.follow" = false }}

# So does a followed log of a running task (tests/unit/test_logs_inprocess.py follows).
# A log comes from the task's worker: when that worker is down the manager answers the
# documented 503 (tests/unit/test_logs_inprocess.py), and the fuzz's own thousands of
# tasks can keep this one worker too busy to answer the manager in time. The check of
# the documented codes (status_code_conformance) still applies.
[[operations]]
include-name = "GET /tasks/{{task_id}}/logs"
parameters = {{ "query.follow" = false }}
checks.not_a_server_error.enabled = false
""",
    )
    assert httpx.get(f"{manager.url}/health").status_code == 200  # still up
    assert not containers_of(worker.name)


def test_the_worker_answers_every_fuzzed_request_as_documented(
    tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(*SIMULATED)
    auth = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    event = {"State": 2, "Task": {"Image": "cube/busybox:latest"}}
    task = httpx.post(f"{worker.url}/tasks", json=event, headers=auth).json()
    fuzz(
        worker.url,
        tmp_path,
        f"""
[auth.openapi.WorkerToken]
bearer = {toml(WORKER_TOKEN)}

[dictionaries.tasks]
values = {toml([task["ID"]])}
[parameters]
"path.task_id" = {{ dictionary = "tasks", probability = 0.5 }}

# A watch streams until the worker stops (schemathesis reads only SSE streams to a
# bound), and a long poll may hold a request a minute: both have tests of their own.
[[operations]]
include-name = "GET /tasks"
parameters = {{ "query.watch" = false, "query.wait" = 0 }}

[[operations]]
include-name = "GET /tasks/{{task_id}}/logs"
parameters = {{ "query.follow" = false }}
""",
    )
    assert httpx.get(f"{worker.url}/health").status_code == 200
    assert not containers_of(worker.name)
