"""Placement constraints: which nodes a task may run on, by label or built-in attribute.

A constraint names an attribute, an operator and (but for ``exists``) a value, as in
Nomad's ``constraint`` block: ``{"Attribute": "zone", "Operator": "=", "Value": "a"}``.
The attribute is looked up in the node's ``Labels`` (``cube worker --label zone=a``),
then in its ``Attributes`` (built in: hostname, os, arch, cores, memory). Labels may not
reuse a built-in name, so the lookup order never hides one behind the other.

A node without the attribute fails ``=``, ``in`` and ``exists`` and passes ``!=`` and
``not in``: "not in zone a" holds of a node that is in no zone. Nomad's ``!=`` and
Kubernetes' ``NotIn`` treat a missing attribute alike.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Iterable
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

from cube.node import Node

OperatorName = Literal["=", "!=", "in", "not in", "exists"]
OPERATORS: tuple[str, ...] = ("=", "!=", "in", "not in", "exists")
BUILTIN = frozenset({"hostname", "os", "arch", "cores", "memory"})
# A label name: what Kubernetes allows in a label key, roughly (letters, digits, . _ - /).
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")


class Constraint(BaseModel):
    """One placement rule; invalid ones are refused with a message fit for a 400."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Attribute: str
    Operator: OperatorName
    # A string; for in / not in also a list of strings or "a,b". None for exists.
    Value: str | tuple[str, ...] | None = None
    # The values compared against, worked out once: matches() runs per node.
    _values: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("Attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required: a label name, or hostname, os, arch, cores or memory")
        return value.strip()

    @field_validator("Operator", mode="before")
    @classmethod
    def _operator(cls, value: Any) -> Any:
        if value not in OPERATORS:
            names = ", ".join(repr(o) for o in OPERATORS)
            raise ValueError(f"must be one of {names}, got {value!r}")
        return value

    @field_validator("Value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # One clear message rather than pydantic's one per member of the union; and
        # {"Attribute": "cores", "Value": 4} means "4": attributes are strings.
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return tuple(_as_text(item) for item in value)
        return _as_text(value)

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Constraint:
        op, value = self.Operator, self.Value
        if op == "exists":
            if value is not None:
                raise ValueError("Value must be left out for Operator 'exists'")
            return self
        if value is None:
            raise ValueError(f"Value is required for Operator {op!r}")
        if op in ("=", "!="):
            if not isinstance(value, str):
                raise ValueError(f"Value must be one string for Operator {op!r}, not a list")
            self._values = frozenset({value})
            return self
        items = value.split(",") if isinstance(value, str) else value
        values = frozenset(v.strip() for v in items if v.strip())
        if not values:
            raise ValueError(f"Value must name at least one value for Operator {op!r}")
        self._values = values
        return self

    def keep(self, nodes: list[Node]) -> list[Node]:
        """The nodes that satisfy it, in order (the scheduler's checks filter lists).

        One comprehension over plain locals: per node, a pydantic attribute read costs
        more than the test itself. ``Labels.get(a, Attributes.get(a))`` is the lookup
        order of the module docstring; None (missing) is in no set of values.
        """
        a, values = self.Attribute, self._values
        if self.Operator == "exists":
            return [n for n in nodes if a in n.Labels or a in n.Attributes]
        if self.Operator in ("=", "in"):
            return [n for n in nodes if n.Labels.get(a, n.Attributes.get(a)) in values]
        return [n for n in nodes if n.Labels.get(a, n.Attributes.get(a)) not in values]

    def matches(self, node: Node) -> bool:
        """Whether the node satisfies the constraint (see the module docstring)."""
        return bool(self.keep([node]))

    def __str__(self) -> str:
        """As a Pending reason quotes it: ``zone = a``, ``zone in (a, b)``, ``ssd exists``."""
        if self.Operator == "exists":
            return f"{self.Attribute} exists"
        if self.Operator in ("=", "!="):
            return f"{self.Attribute} {self.Operator} {self.Value}"
        return f"{self.Attribute} {self.Operator} ({', '.join(sorted(self._values))})"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"must be a string or a list of strings, got {value!r}")


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``cube worker --label k=v ...`` as a dict; ValueError with one line if malformed.

    A built-in attribute's name is refused: a label ``os=windows`` would otherwise
    shadow what the machine really runs.
    """
    labels: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"invalid label {item!r}: expected NAME=VALUE, e.g. zone=a")
        if not _LABEL.match(name):
            raise ValueError(
                f"invalid label name {name!r}: use 1 to 63 of letters, digits, '.', '_', '-'"
                " and '/', starting with a letter or digit"
            )
        if name in BUILTIN:
            raise ValueError(
                f"label {name!r} is a built-in attribute (hostname, os, arch, cores, memory);"
                " pick another name"
            )
        if name in labels:
            raise ValueError(f"label {name!r} given twice")
        labels[name] = value.strip()
    return labels


def builtin_attributes() -> dict[str, str]:
    """This machine's built-in attributes, for its worker to report (memory in bytes)."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "arch": platform.machine().lower(),
        "cores": str(os.cpu_count() or 1),
        "memory": str(psutil.virtual_memory().total),
    }
