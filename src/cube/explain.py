"""Why a task is where it is: the scheduler's decision, kept on the task.

Every placement records what the scheduler looked at (``NodesEvaluated``), how many
nodes each feasibility check turned away (``NodesFiltered``, by check: ``memory``,
``ports``, ``constraint ${node.labels.zone} = a``...), the best scores among the nodes
that fit, and the node chosen: Nomad's allocation metrics (``NodesEvaluated``,
``ConstraintFiltered``, ``DimensionExhausted``, ``ScoreMetaData``) in one small record.
A task that fits nowhere keeps the same record with no ``Node``, beside the ``Reason``
that words it ("no feasible node: 3 nodes lack memory (need 1 GiB)").

Scores are the scheduler's own: for E-PVM the cost of adding the task (lower is
better), for round robin 0.1 for the node whose turn it is and 1 for the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cube.fieldsets import construct

TOP_SCORES = 3  # as Nomad's `alloc status -verbose` shows the top few


@dataclass(frozen=True, slots=True)
class NodeScore:
    """A feasible node and its score.

    A slotted dataclass rather than a model (pydantic validates and serialises it
    the same): three are made per placement, and as plain values, without a dict and
    a set of fields each, they cost half as much to make and less for the collector.
    """

    Node: str
    Score: Annotated[float, Field(description="The scheduler's score; lower is better.")]


class Decision(BaseModel):
    """One placement decision (the ``Placement`` field of a task)."""

    model_config = ConfigDict(frozen=True)

    Scheduler: str = Field(default="", description="epvm or roundrobin.")
    NodesEvaluated: int = Field(default=0, ge=0, description="Nodes the checks looked at.")
    NodesFiltered: dict[str, int] = Field(
        default_factory=dict,
        description="Nodes each feasibility check turned away (a node counts once, "
        "against the first check it fails).",
    )
    NodesFeasible: int = Field(default=0, ge=0, description="Nodes that passed every check.")
    TopScores: list[NodeScore] = Field(
        default_factory=list, description="The best-scored feasible nodes, best first."
    )
    Node: str = Field(default="", description="The node chosen; empty when none fits.")


def decide(
    scheduler: str,
    evaluated: int,
    filtered: Mapping[str, int],
    scores: Mapping[str, float],
    chosen: str,
) -> Decision:
    """The record of a decision, with the few best scores (best first, the chosen node
    always among them)."""
    # Sorting a few dozen names whole by their score (a key in C, no Python call per
    # name) is faster than heapq.nsmallest's bookkeeping. It runs once per placement.
    best = sorted(scores, key=scores.__getitem__)[:TOP_SCORES]
    if chosen and chosen not in best:
        best = [chosen, *best[: TOP_SCORES - 1]]
    # The values are the scheduler's own, already checked.
    top = [NodeScore(n, _finite(scores[n])) for n in best]
    fields = {
        "Scheduler": scheduler,
        "NodesEvaluated": evaluated,
        "NodesFiltered": dict(filtered),
        "NodesFeasible": len(scores),
        "TopScores": top,
        "Node": chosen,
    }
    return construct(Decision, fields)


def _finite(score: float) -> float:
    """JSON has no infinity; a node too full to price scores as the largest float."""
    return score if math.isfinite(score) else 1.7976931348623157e308


def summary(decision: Decision) -> str:
    """One line for `cube status` and `cube plan`: evaluated, filtered, scores."""
    parts = [f"{decision.NodesEvaluated} evaluated"]
    if decision.NodesFiltered:
        parts.append(
            "filtered: " + ", ".join(f"{k} {v}" for k, v in decision.NodesFiltered.items())
        )
    if decision.TopScores:
        parts.append(
            f"{decision.Scheduler or 'scores'}: "
            + ", ".join(f"{s.Node} {s.Score:.3g}" for s in decision.TopScores)
        )
    return "; ".join(parts)
