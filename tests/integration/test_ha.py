"""Several managers on a real 3-member etcd (issue 17): one leads, the others forward;
the leader SIGKILLed at random points loses nothing acknowledged and runs nothing twice;
an etcd member lost costs nothing, a quorum lost refuses writes with a 503 until it is
back. Workers are real `cube worker` processes on the simulated runtime (the placement,
fencing and failover under test are the managers'; Docker adds nothing to them here)."""

from __future__ import annotations

import random
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ETCD,
    EtcdCluster,
    ManagerProcess,
    WorkerProcess,
    free_port,
    terminate,
    wait_for,
    worker_process,
)

RUNNING = 2
JOIN = "ha-join-token-5b1e"
WORKER_TOKEN = "ha-worker-token-77c0"  # the test reads workers with it
TTL = "2"
AS_TEST = {"Authorization": f"Bearer {WORKER_TOKEN}"}


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server")
    cluster = EtcdCluster.of(tmp_path_factory.mktemp("etcd3")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Managers:
    """Three `cube manager --store etcd://…` processes sharing a prefix of their own."""

    tmp: Path
    store: str
    procs: list[ManagerProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, count: int = 3) -> Managers:
        for i in range(count):
            port = free_port()
            args = [
                *("manager", "-H", "127.0.0.1", "-p", str(port)),
                *("--store", self.store, "--lease-ttl", TTL, "--join-token", JOIN),
                *("--data-dir", str(self.tmp / f"m{i}"), "--poll-interval", "0.2"),
            ]
            log = self.tmp / f"manager-{i}.log"
            self.procs.append(ManagerProcess(args=args, log=log, port=port).start())
        for proc in self.procs:
            wait_for(lambda p=proc: health(p) is not None, 30, what="a manager answering")
        return self

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p.port}" for p in self.procs)

    def join(self, count: int) -> None:
        for i in range(count):
            worker = worker_process(
                self.tmp,
                *(
                    "--runtime",
                    "simulated",
                    "--join",
                    self.addresses,
                    "--join-token",
                    JOIN,
                ),
                *("--token", WORKER_TOKEN),
                name=f"ha-{uuid.uuid4().hex[:6]}-{i}",
            ).start()
            self.workers.append(worker)
        wait_for(lambda: self.ready() >= count, 30, what=f"{count} workers ready")

    def ready(self) -> int:
        nodes = self.get("/nodes")
        return sum(n["Status"] == "ready" for n in nodes)

    def leader(self, timeout: float = 30) -> ManagerProcess:
        """The manager that says it leads (and that every live one names)."""

        def found() -> ManagerProcess | None:
            leading = [p for p in self.live() if (health(p) or {}).get("Leading") is True]
            return leading[0] if len(leading) == 1 else None

        return wait_for(found, timeout, what="one leader")

    def live(self) -> list[ManagerProcess]:
        return [p for p in self.procs if p.proc is not None and p.proc.poll() is None]

    def get(self, path: str) -> Any:
        """From whichever live manager answers (followers forward); while none leads
        (a failover), they answer 503 and the read is tried again, as clients do."""

        def attempt() -> list[Any] | None:
            for proc in self.live():
                try:
                    answer = httpx.get(f"{proc.url}{path}", timeout=10)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    return [answer.json()]
                assert answer.status_code == 503, answer.text
            return None

        return wait_for(attempt, 30, what=f"GET {path} answered")[0]

    def stop(self) -> None:
        for proc in [*self.procs, *self.workers]:
            terminate(proc.proc)


def health(proc: ManagerProcess) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"{proc.url}/health", timeout=3)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


@pytest.fixture
def managers(
    etcd3: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Managers]]:
    made: list[Managers] = []

    def make() -> Managers:
        prefix = f"ha-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"
        cluster = Managers(tmp_path, etcd3.url(prefix)).start()
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def event(name: str) -> dict[str, Any]:
    return {"State": RUNNING, "Task": {"ID": str(uuid.uuid4()), "Name": name, "Image": "sim"}}


def submit(cluster: Managers, body: dict[str, Any], timeout: float = 60) -> None:
    """POST /tasks to the managers in turn until one acknowledges it: a retried
    submission of the same task is acknowledged once (cube.manager.Manager.submit_many),
    so a client may retry anything it did not see acknowledged."""

    def acknowledged() -> bool:
        for proc in random.sample(cluster.live(), len(cluster.live())):
            try:
                answer = httpx.post(f"{proc.url}/tasks", json=body, timeout=10)
            except httpx.HTTPError:
                continue
            if answer.status_code == 201:
                return True
            assert answer.status_code == 503, answer.text  # nothing else is a retry
            assert answer.json()["Message"]
        return False

    wait_for(acknowledged, timeout, what=f"task {body['Task']['ID']} acknowledged")


def running_copies(cluster: Managers) -> Counter[str]:
    """Each task's Running copies, as the workers themselves report them."""
    seen: Counter[str] = Counter()
    for worker in cluster.workers:
        answer = httpx.get(f"{worker.url}/tasks", timeout=10, headers=AS_TEST)
        assert answer.status_code == 200, answer.text
        for task in answer.json():
            if task["State"] == RUNNING:
                seen[task["ID"]] += 1
    return seen


def test_one_manager_leads_and_the_others_forward_everything(
    managers: Callable[[], Managers],
) -> None:
    cluster = managers()
    leader = cluster.leader()
    followers = [p for p in cluster.procs if p is not leader]
    views = [health(p) for p in cluster.procs]
    assert {(v or {}).get("Leader") for v in views} == {leader.url}
    assert len({(v or {}).get("Term") for v in views}) == 1
    assert [(v or {}).get("Leading") for v in views].count(True) == 1

    cluster.join(2)
    body = event("through-a-follower")
    answer = httpx.post(f"{followers[0].url}/tasks", json=body, timeout=10)
    assert answer.status_code == 201, answer.text
    task_id = body["Task"]["ID"]
    wait_for(
        lambda: httpx.get(f"{followers[1].url}/tasks/{task_id}").json()["State"] == RUNNING,
        30,
        what="the task Running, read through the other follower",
    )
    # A stream, forwarded: the task's events, through a follower, as NDJSON.
    answer = httpx.get(
        f"{followers[1].url}/events", params={"index": 0, "follow": "false"}, timeout=10
    )
    assert answer.status_code == 200
    assert task_id in answer.text
    # A follower's answer to a bad request is the leader's: a 400 with a Message.
    answer = httpx.post(f"{followers[0].url}/tasks", content=b"{", timeout=10)
    assert answer.status_code == 400 and answer.json()["Message"]

    # Followers serve reads of tasks and events from their own view (etcd's watch):
    # with the leader gone, and its lease not yet run out, they still answer them,
    # while writes wait for a leader (503).
    leader.kill()
    for follower in followers:
        seen = httpx.get(f"{follower.url}/tasks/{task_id}", timeout=10)
        assert seen.status_code == 200 and seen.json()["State"] == RUNNING, seen.text
        history = httpx.get(f"{follower.url}/tasks/{task_id}/events", timeout=10)
        assert history.status_code == 200 and history.json()[0]["Task"]["ID"] == task_id
        refused = httpx.post(f"{follower.url}/tasks", json=event("no-leader"), timeout=10)
        assert refused.status_code == 503 and refused.json()["Message"]
    # A view follows what the next leader does.
    later = event("after-the-leader")
    submit(cluster, later)
    new = cluster.leader()
    (follower,) = [p for p in followers if p is not new]
    wait_for(
        lambda: httpx.get(f"{follower.url}/tasks/{later['Task']['ID']}").json()["State"] == RUNNING,
        30,
        what="a follower's view of a task the new leader ran",
    )
    index = httpx.get(f"{follower.url}/events", params={"index": 0, "follow": "false"})
    assert later["Task"]["ID"] in index.text


def test_the_leader_sigkilled_during_200_submissions_loses_nothing_and_runs_nothing_twice(
    managers: Callable[[], Managers],
) -> None:
    cluster = managers()
    cluster.join(3)
    rng = random.Random(17)
    kills = sorted(rng.sample(range(10, 190), 3))
    bodies = [event(f"burst-{i}") for i in range(200)]
    for i, body in enumerate(bodies):
        if i in kills:
            victim = cluster.leader()
            victim.kill()
            victim.start()  # back as a follower, on the same port
        submit(cluster, body)
    wanted = {b["Task"]["ID"] for b in bodies}

    def all_running() -> bool:
        tasks = {t["ID"]: t["State"] for t in cluster.get("/tasks")}
        return all(tasks.get(i) == RUNNING for i in wanted)

    wait_for(all_running, 60, what="every acknowledged task Running")
    copies = running_copies(cluster)
    assert {i: copies[i] for i in wanted if copies[i] != 1} == {}
    assert set(copies) == wanted  # and nothing else runs
    terms = {(health(p) or {}).get("Term") for p in cluster.live()}
    assert len(terms) == 1 and (terms.pop() or 0) > 0


def job(env: str) -> dict[str, Any]:
    return {
        "Name": "web",
        "Count": 6,
        "Task": {"Image": "sim", "Env": [env]},
        "Update": {"MaxParallel": 2, "MinHealthyTime": 1, "HealthyDeadline": 30},
    }


def post(cluster: Managers, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to whichever live manager acknowledges it (a job's POST is idempotent)."""

    def acknowledged() -> dict[str, Any] | None:
        for proc in cluster.live():
            try:
                answer = httpx.post(f"{proc.url}{path}", json=body, timeout=10)
            except httpx.HTTPError:
                continue
            if answer.status_code in (200, 201):
                return answer.json()  # type: ignore[no-any-return]
            assert answer.status_code == 503, answer.text
        return None

    return wait_for(acknowledged, 60, what=f"POST {path} acknowledged")


def test_the_leader_sigkilled_mid_rollout_the_next_one_finishes_it(
    managers: Callable[[], Managers],
) -> None:
    cluster = managers()
    cluster.join(3)
    post(cluster, "/jobs", job("V=1"))
    wait_for(lambda: cluster.get("/jobs/web")["Deployment"]["Status"] == "successful", 60)
    post(cluster, "/jobs", job("V=2"))

    def rolling() -> bool:
        tasks = cluster.get("/tasks?job=web")
        return any(t["JobVersion"] == 2 and t["State"] == RUNNING for t in tasks)

    wait_for(rolling, 60, what="the rollout under way")
    old = cluster.leader()
    deployment = httpx.get(f"{old.url}/jobs/web", timeout=10).json()["Deployment"]
    old.kill()
    assert deployment["Status"] == "running", deployment  # killed mid-rollout
    old.start()

    def finished() -> bool:
        deployment = cluster.get("/jobs/web")["Deployment"]
        return bool(deployment["Status"] == "successful" and deployment["Version"] == 2)

    wait_for(finished, 90, what="the rollout finished by the next leader")
    tasks = {t["ID"]: t for t in cluster.get("/tasks?job=web")}

    def six_of_v2_exactly_once() -> bool:
        copies = running_copies(cluster)
        versions = Counter(tasks[i]["JobVersion"] for i in copies if i in tasks)
        return versions == Counter({2: 6}) and set(copies.values()) == {1}

    wait_for(six_of_v2_exactly_once, 30, what="6 replicas of version 2, each once")


def test_an_etcd_member_lost_costs_nothing_and_a_quorum_lost_refuses_writes(
    managers: Callable[[], Managers], etcd3: EtcdCluster
) -> None:
    cluster = managers()
    cluster.join(2)
    first, second = etcd3.members[0], etcd3.members[1]
    try:
        first.kill()
        bodies = [event(f"one-member-down-{i}") for i in range(20)]
        for body in bodies:
            submit(cluster, body)  # retried on a 503, which the client sees as such
        wanted = {b["Task"]["ID"] for b in bodies}

        def running() -> bool:
            states = {t["ID"]: t["State"] for t in cluster.get("/tasks")}
            return all(states.get(i) == RUNNING for i in wanted)

        wait_for(running, 60, what="every task Running with one etcd member down")

        second.kill()  # one of three left: no quorum
        refused = event("no-quorum")
        for proc in cluster.live():
            answer = httpx.post(f"{proc.url}/tasks", json=refused, timeout=30)
            assert answer.status_code == 503, answer.text
            message = answer.json()["Message"]
            assert "etcd" in message or "no manager leads" in message, message
    finally:
        for member in (first, second):
            if member.proc is None or member.proc.poll() is not None:
                member.start(wait=False)
        for member in etcd3.members:
            wait_for(member.healthy, 30, what=f"{member.name} back")

    # Nothing half-done: the refused task is in the store whole (with its history), or
    # not at all; and the cluster takes work again.
    submit(cluster, (after := event("quorum-back")))
    answer = None
    for proc in cluster.live():
        answer = httpx.get(f"{proc.url}/tasks/{refused['Task']['ID']}", timeout=10)
        if answer.status_code != 503:
            break
    assert answer is not None and answer.status_code in (200, 404), answer
    if answer.status_code == 200:
        history = cluster.get(f"/tasks/{refused['Task']['ID']}/events")
        assert [e["Task"]["ID"] for e in history][:1] == [refused["Task"]["ID"]]
    wait_for(
        lambda: cluster.get(f"/tasks/{after['Task']['ID']}")["State"] == RUNNING,
        60,
        what="a task submitted after the quorum came back Running",
    )


def test_a_leader_frozen_past_its_lease_steps_down_and_workers_refuse_it(
    managers: Callable[[], Managers],
) -> None:
    cluster = managers()
    cluster.join(2)
    before = [event(f"before-freeze-{i}") for i in range(4)]
    for body in before:
        submit(cluster, body)
    old = cluster.leader()
    old_term = (health(old) or {})["Term"]
    assert old.proc is not None
    old.proc.send_signal(signal.SIGSTOP)
    try:

        def new_leader() -> dict[str, Any] | None:
            for proc in cluster.procs:
                seen = health(proc) if proc is not old else None
                if seen and seen.get("Leading") and seen["Term"] > old_term:
                    return seen
            return None

        new = wait_for(new_leader, 30, what="another manager leading in a newer term")
        # The new leader commands the workers: they have heard of its term.
        after = event("after-freeze")
        submit(cluster, after)
        wait_for(
            lambda: cluster.get(f"/tasks/{after['Task']['ID']}")["State"] == RUNNING,
            30,
            what="a task placed by the new leader Running",
        )
    finally:
        old.proc.send_signal(signal.SIGCONT)
    # Awake, the old leader steps down...
    wait_for(lambda: (health(old) or {}).get("Leading") is False, 30, what="the old one follows")
    assert (health(old) or {}).get("Term") == new["Term"]
    # ...and the workers refuse its term. Whatever it sent between waking and stepping
    # down was refused (it may step down first: then it sent nothing); a command of its
    # term, as its clients send them, is refused now, and the workers' logs say so.
    new_term = new["Term"]
    victim = before[0]["Task"]["ID"]
    said = f"stale term {old_term}, older than term"
    for worker in cluster.workers:
        stale = {**AS_TEST, "X-Cube-Term": str(old_term)}
        answer = httpx.delete(f"{worker.url}/tasks/{victim}", headers=stale, timeout=10)
        assert answer.status_code == 409, answer.text
        assert int(answer.headers["X-Cube-Term"]) >= new_term
        wait_for(lambda w=worker: said in w.output(), 10, what=f"{worker.name} saying {said}")
    assert "stepping down" in old.output() or "deposed" in old.output()
    # Nothing it did counted: every task runs exactly once.
    wanted = {b["Task"]["ID"] for b in [*before, after]}
    wait_for(lambda: set(running_copies(cluster)) == wanted, 30, what="every task Running")
    assert set(running_copies(cluster).values()) == {1}
