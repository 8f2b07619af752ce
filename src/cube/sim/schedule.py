"""What happens in a simulated run: user actions and faults, drawn from a seed.

A run is a :class:`Scenario`: how many workers, and a list of :class:`Step` at virtual
times. Each step stands alone (a fault carries its own duration and its own random
generator), so the shrinker can drop any subset of steps and the rest still mean the
same thing.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

# kind -> weight when drawing a step
KINDS: dict[str, int] = {
    "submit": 24,
    "stop": 10,
    "exit": 10,  # a container ends by itself (code 0, 1 or 137)
    "partition": 8,  # the manager cut off from some workers
    "lossy": 7,  # messages lost on a link
    "slow": 6,  # messages delayed (and so reordered) on a link
    "duplicate": 5,  # writes delivered twice on a link
    "worker_crash": 7,
    "manager_crash": 5,  # at a moment
    "manager_crash_commit": 5,  # just before or after a given write
    "docker_down": 6,
    "health": 7,  # a task's health endpoint fails or is slow
    "job": 8,  # a service job created or updated (a new version or a new Count)
    "job_scale": 4,
    "job_stop": 2,
    "job_revert": 3,
    "drain": 4,  # a node drained (perhaps with a deadline)
    "eligible": 4,
    "ineligible": 2,
    "intrude": 3,  # someone but the manager sends a worker a task
}
# With several managers (on a simulated etcd), instead of crashing the one at a commit:
LEADER_KINDS: dict[str, int] = {
    "leader_crash": 5,  # SIGKILL the leader; it comes back ``for`` seconds later
    "freeze": 6,  # a manager (mostly the leader) stops running, past its lease or not
    "etcd_down": 4,  # etcd refuses or hangs every call for a while
}
JOBS = ["web", "api"]
POLICIES = ["", "no", "on-failure", "always"]
ACTIVE = 60.0  # virtual seconds during which steps happen


@dataclass(frozen=True)
class Step:
    at: float
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        detail = " ".join(f"{key}={value}" for key, value in sorted(self.args.items()))
        return f"{self.kind} {detail}".strip()


@dataclass(frozen=True)
class Scenario:
    seed: int
    workers: int
    steps: tuple[Step, ...]
    joining: int = 0  # how many of the workers join (and heartbeat) rather than -w
    managers: int = 1  # more than one: they elect a leader on a simulated etcd

    def without(self, drop: set[int]) -> Scenario:
        kept = tuple(s for i, s in enumerate(self.steps) if i not in drop)
        return Scenario(self.seed, self.workers, kept, self.joining, self.managers)

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "workers": self.workers,
                "joining": self.joining,
                "managers": self.managers,
                "steps": [asdict(s) for s in self.steps],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        data = json.loads(text)
        steps = tuple(Step(s["at"], s["kind"], s["args"]) for s in data["steps"])
        joining, managers = int(data.get("joining", 0)), int(data.get("managers", 1))
        return cls(int(data["seed"]), int(data["workers"]), steps, joining, managers)


def generate(seed: int, managers: int = 1) -> Scenario:
    """``managers``: 1 gives the scenarios seeds always gave; more, leaders' faults too."""
    rng = random.Random(seed)
    workers = rng.randint(2, 4)
    joining = rng.randint(0, workers)
    table = KINDS
    if managers > 1:
        table = {k: w for k, w in KINDS.items() if k != "manager_crash_commit"} | LEADER_KINDS
    kinds, weights = list(table), list(table.values())
    steps: list[Step] = [Step(0.5, "submit", _submit_args(rng))]
    at = 0.5
    while True:
        at += rng.expovariate(1 / 1.5)
        if at >= ACTIVE:
            break
        kind = rng.choices(kinds, weights)[0]
        args = _args(kind, rng, workers)
        if kind == "manager_crash" and managers > 1:
            args["manager"] = rng.randrange(managers)
        steps.append(Step(round(at, 3), kind, args))
    return Scenario(seed, workers, tuple(steps), joining, managers)


def _submit_args(rng: random.Random) -> dict[str, Any]:
    return {
        "count": rng.randint(1, 4),
        "memory_mib": rng.choice([0, 64, 256]),
        "policy": rng.choice(POLICIES),
        "health": rng.random() < 0.4,
    }


def _args(kind: str, rng: random.Random, workers: int) -> dict[str, Any]:
    worker = rng.randrange(workers)
    lasting = round(rng.uniform(1.0, 25.0), 3)
    if kind == "submit":
        return _submit_args(rng)
    if kind == "stop":
        return {"pick": rng.randrange(1 << 16)}
    if kind == "exit":
        return {"worker": worker, "pick": rng.randrange(1 << 16), "code": rng.choice([0, 1, 137])}
    if kind == "partition":
        chosen = sorted(rng.sample(range(workers), rng.randint(1, workers)))
        return {"workers": chosen, "mode": rng.choice(["refuse", "blackhole"]), "for": lasting}
    if kind == "lossy":
        return {"worker": worker, "p": round(rng.uniform(0.05, 0.5), 3), "for": lasting}
    if kind == "slow":
        return {"worker": worker, "max": round(rng.uniform(0.05, 3.0), 3), "for": lasting}
    if kind == "duplicate":
        return {"worker": worker, "p": round(rng.uniform(0.1, 1.0), 3), "for": lasting}
    if kind == "worker_crash":
        return {"worker": worker, "keep_store": rng.random() < 0.7, "for": lasting}
    if kind == "manager_crash":
        return {"for": round(rng.uniform(0.0, 15.0), 3)}
    if kind == "manager_crash_commit":
        return {
            "commits": rng.randint(0, 5),
            "after": rng.random() < 0.5,
            "for": round(rng.uniform(0.0, 15.0), 3),
        }
    if kind == "leader_crash":
        return {"for": round(rng.uniform(0.0, 15.0), 3)}
    if kind == "freeze":  # a lease is 5 s: some pauses outlast it, some do not
        who = "leader" if rng.random() < 0.8 else rng.randrange(3)
        return {"who": who, "for": round(rng.uniform(1.0, 20.0), 3)}
    if kind == "etcd_down":
        return {"mode": rng.choice(["refuse", "hang"]), "for": round(rng.uniform(1.0, 20.0), 3)}
    if kind == "docker_down":
        return {"worker": worker, "for": lasting}
    if kind == "job":
        return {
            "name": rng.choice(JOBS),
            "count": rng.randint(0, 5),
            "env": rng.randint(1, 3),  # a different value: a new version
            "parallel": rng.randint(1, 3),
            "order": rng.choice(["start-first", "stop-first"]),
            "memory_mib": rng.choice([0, 64, 128]),
        }
    if kind == "job_scale":
        return {"name": rng.choice(JOBS), "count": rng.randint(0, 6)}
    if kind == "job_stop":
        return {"name": rng.choice(JOBS)}
    if kind == "job_revert":
        return {"name": rng.choice(JOBS), "version": rng.randint(1, 4)}
    if kind == "drain":
        return {"worker": worker, "deadline": rng.choice([None, round(rng.uniform(0.5, 20), 3)])}
    if kind in ("eligible", "ineligible"):
        return {"worker": worker}
    if kind == "intrude":  # with no token, a made-up one, or another worker's credential
        return {"worker": worker, "token": rng.choice(["", "guess", "other"])}
    if kind == "health":
        return {
            "pick": rng.randrange(1 << 16),
            "mode": rng.choice(["fail", "slow"]),
            "for": lasting,
        }
    raise ValueError(kind)
