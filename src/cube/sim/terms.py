"""What must hold of leaders, whatever the faults: checked after every step.

* **One leader per term** (``two-leaders``): every request a worker got in a term came
  from one manager. A term is the create revision of the leader key, so two managers
  that send one term both believe they won the same election.
* **No stale command obeyed** (``stale-term``): a worker never carries out a command
  (a POST, PUT or DELETE it answers 2xx) of a term older than the newest it had taken
  when the command arrived: a deposed leader that wakes up, or whose lease ran out
  while etcd was away, acts on nothing.
"""

from __future__ import annotations

from cube.sim.leaders import Leaders

_COMMANDS = frozenset({"POST", "PUT", "DELETE"})


def check(leaders: Leaders) -> str | None:
    """Look at what the workers got since the last look."""
    senders = leaders.senders
    seen, leaders.received = leaders.received, []
    for received in seen:
        first = senders.setdefault(received.term, received.sender)
        if first != received.sender:
            return (
                f"two-leaders: term {received.term} commanded {received.worker} from "
                f"{first} and from {received.sender}"
            )
        obeyed = received.method in _COMMANDS and 200 <= received.status < 300
        if obeyed and received.term < received.newest:
            return (
                f"stale-term: {received.worker} obeyed {received.method} {received.path} "
                f"of term {received.term} from {received.sender}, after taking term "
                f"{received.newest}"
            )
    return None
