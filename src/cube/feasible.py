"""Feasibility checks: what a check is, and those about which node it is, not its room.

:mod:`cube.scheduler` runs the checks in :data:`~cube.scheduler.CHECKS` order and keeps
the resource ones (memory, disk, CPU, ports); the ones here ask whether the node takes
new work at all (``Eligible``: drains and ``cube node ineligible`` clear it), whether it
satisfies the task's placement constraints (:mod:`cube.constraints`), and whether it
already runs a task of the same job when the task asks for distinct hosts. They are
Nomad's feasibility checkers of the same names (and Kubernetes' NodeUnschedulable,
NodeAffinity and pod anti-affinity filters).

A check that cannot fail for a task (``applies`` is False) is skipped for the whole
decision, so unconstrained tasks pay nothing for constraints or distinct hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cube.constraints import Constraint
from cube.node import Node

if TYPE_CHECKING:
    from cube.scheduler import Demand


@dataclass(frozen=True, slots=True)
class Check:
    """One feasibility check, in the Kubernetes Filter-plugin sense.

    ``keep`` filters a whole list in one comprehension rather than being called once
    per node: at thousands of nodes per decision, a Python call per node per check
    costs more than the checks themselves. ``applies`` lets a decision skip checks
    the task cannot fail (it requests no memory, no ports...). ``explain`` words the
    rejection of ``count`` nodes for the task's Pending reason. ``expand``, when set,
    splits the check into one per item for a decision (a check per constraint), so the
    reason counts the nodes each item turned away.
    """

    name: str
    applies: Callable[[Demand], bool]
    keep: Callable[[Demand, list[Node]], list[Node]]
    explain: Callable[[Demand, int], str]
    expand: Callable[[Demand], tuple[Check, ...]] | None = None

    def fits(self, demand: Demand, node: Node) -> bool:
        return bool(self.keep(demand, [node]))


def nodes_phrase(count: int, singular: str, plural: str) -> str:
    """``1 node is`` / ``3 nodes are``: the start of each part of a Pending reason."""
    return f"1 node {singular}" if count == 1 else f"{count} nodes {plural}"


def _keep_eligible(d: Demand, nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.Eligible]


def _keep_distinct(d: Demand, nodes: list[Node]) -> list[Node]:
    job = d.distinct_job
    return [n for n in nodes if job not in n.JobTasks]


def _keep_matching(d: Demand, nodes: list[Node]) -> list[Node]:
    for constraint in d.constraints:
        nodes = constraint.keep(nodes)
    return nodes


def constraint_check(constraint: Constraint) -> Check:
    """The check for one constraint, named after it so its rejections count apart."""
    text = str(constraint)
    keep = constraint.keep
    return Check(
        name=f"constraint {text}",
        applies=lambda d: True,
        keep=lambda d, nodes: keep(nodes),
        explain=lambda d, c: nodes_phrase(c, "fails", "fail") + f" constraint {text}",
    )


def _each_constraint(d: Demand) -> tuple[Check, ...]:
    # The same constraint twice is one check: its second copy could turn no node away.
    return tuple({str(c): constraint_check(c) for c in d.constraints}.values())


ELIGIBLE_CHECK = Check(
    name="eligible",
    applies=lambda d: True,
    keep=_keep_eligible,
    explain=lambda d, c: (
        nodes_phrase(c, "is", "are") + " not eligible (draining or marked ineligible)"
    ),
)
CONSTRAINTS_CHECK = Check(
    name="constraints",
    applies=lambda d: bool(d.constraints),
    keep=_keep_matching,
    explain=lambda d, c: (
        nodes_phrase(c, "fails", "fail")
        + " constraints "
        + "; ".join(str(x) for x in d.constraints)
    ),
    expand=_each_constraint,
)
DISTINCT_HOSTS_CHECK = Check(
    name="distinct_hosts",
    applies=lambda d: bool(d.distinct_job),
    keep=_keep_distinct,
    explain=lambda d, c: (
        nodes_phrase(c, "already runs", "already run")
        + f" a task of job {d.distinct_job} (DistinctHosts)"
    ),
)
