"""Placement constraints: each operator on present and absent attributes, validation
messages, label parsing and the built-in attributes."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from cube.constraints import BUILTIN, Constraint, builtin_attributes, parse_labels
from cube.errors import describe
from cube.job import Job
from cube.node import Node
from cube.task import Task


def rule(attribute: str, operator: str, value: Any = None) -> Constraint:
    body: dict[str, Any] = {"Attribute": attribute, "Operator": operator}
    if value is not None:
        body["Value"] = value
    return Constraint.model_validate(body)


# A node in zone a with no "disk" label; os is a built-in attribute.
IN_A = Node(Name="n", Labels={"zone": "a", "rack": ""}, Attributes={"os": "linux", "cores": "4"})


@pytest.mark.parametrize(
    ("attribute", "operator", "value", "matches"),
    [
        # =: present and equal, present and different, absent
        ("zone", "=", "a", True),
        ("zone", "=", "b", False),
        ("disk", "=", "ssd", False),
        # !=: a missing attribute passes
        ("zone", "!=", "b", True),
        ("zone", "!=", "a", False),
        ("disk", "!=", "ssd", True),
        # in: list, comma-separated string (spaces ignored), absent
        ("zone", "in", ["a", "b"], True),
        ("zone", "in", "b, a", True),
        ("zone", "in", ["b", "c"], False),
        ("disk", "in", ["ssd", "hdd"], False),
        # not in: a missing attribute passes
        ("zone", "not in", ["b", "c"], True),
        ("zone", "not in", "c,a", False),
        ("disk", "not in", ["ssd"], True),
        # exists: present (even empty), absent
        ("zone", "exists", None, True),
        ("rack", "exists", None, True),
        ("disk", "exists", None, False),
        # built-in attributes, found after the labels; numbers compare as text
        ("os", "=", "linux", True),
        ("os", "!=", "linux", False),
        ("cores", "=", 4, True),
        ("cores", "in", ["2", "4"], True),
        ("cores", "in", [2, 4], True),
        ("arch", "exists", None, False),
        # empty label values are values
        ("rack", "=", "", True),
    ],
)
def test_operators(attribute: str, operator: str, value: Any, matches: bool) -> None:
    assert rule(attribute, operator, value).matches(IN_A) is matches


def test_labels_are_looked_up_before_built_in_attributes() -> None:
    both = Node(Name="n", Labels={"os": "label"}, Attributes={"os": "linux"})
    assert rule("os", "=", "label").matches(both)
    assert not rule("os", "=", "linux").matches(both)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Attribute": "zone", "Operator": "like", "Value": "a"}, "Operator: must be one of '='"),
        ({"Attribute": "zone", "Operator": "==", "Value": "a"}, "got '=='"),
        ({"Attribute": " ", "Operator": "=", "Value": "a"}, "Attribute: required: a label"),
        ({"Operator": "=", "Value": "a"}, "missing field 'Attribute'"),
        ({"Attribute": "zone", "Value": "a"}, "missing field 'Operator'"),
        ({"Attribute": "zone", "Operator": "="}, "Value is required for Operator '='"),
        ({"Attribute": "zone", "Operator": "not in"}, "Value is required for Operator 'not in'"),
        ({"Attribute": "zone", "Operator": "=", "Value": ["a"]}, "one string for Operator '='"),
        ({"Attribute": "zone", "Operator": "!=", "Value": ["a"]}, "one string for Operator '!='"),
        ({"Attribute": "zone", "Operator": "in", "Value": []}, "at least one value for Operator"),
        ({"Attribute": "zone", "Operator": "in", "Value": " , "}, "at least one value"),
        ({"Attribute": "zone", "Operator": "exists", "Value": "a"}, "Value must be left out"),
        ({"Attribute": "zone", "Operator": "=", "Value": True}, "Value: must be a string or a"),
        ({"Attribute": "zone", "Operator": "in", "Value": [{}]}, "list of strings, got {}"),
        ({"Attribute": "zone", "Operator": "=", "Value": "a", "Weight": 5}, "unknown field"),
    ],
)
def test_invalid_constraints_say_what_is_wrong(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Constraint.model_validate(body)
    assert message in describe(caught.value)


def test_a_constraint_reads_as_the_pending_reason_quotes_it() -> None:
    assert str(rule("zone", "=", "a")) == "zone = a"
    assert str(rule("zone", "!=", "a")) == "zone != a"
    assert str(rule("zone", "in", "b,a")) == "zone in (a, b)"
    assert str(rule("zone", "not in", ["c"])) == "zone not in (c)"
    assert str(rule("ssd", "exists")) == "ssd exists"


def test_the_wire_keeps_what_was_sent() -> None:
    body = {"Attribute": "zone", "Operator": "in", "Value": "a,b"}
    assert rule("zone", "in", "a,b").model_dump() == body
    task = Task.model_validate({"Image": "x", "Constraints": [body], "DistinctHosts": True})
    again = Task.model_validate(task.to_wire())
    assert again.Constraints == task.Constraints and again.DistinctHosts
    assert again.Constraints is not None and again.Constraints[0].matches(IN_A)
    # The book's bodies, without either field, stay valid and unconstrained.
    plain = Task.model_validate({"Image": "x"})
    assert (plain.Constraints, plain.DistinctHosts) == (None, False)


def test_a_malformed_constraint_in_a_task_names_where_it_is() -> None:
    with pytest.raises(ValidationError) as caught:
        Task.model_validate({"Image": "x", "Constraints": [{"Attribute": "z", "Operator": "="}]})
    assert describe(caught.value) == "Constraints.0: Value is required for Operator '='"


# --- jobs -------------------------------------------------------------------------------

ZONE_A = {"Attribute": "zone", "Operator": "=", "Value": "a"}
SSD = {"Attribute": "disk", "Operator": "exists"}


def job(**fields: Any) -> Job:
    body: dict[str, Any] = {"Name": "web", "Task": {"Image": "x"}}
    body.update(fields)
    return Job.model_validate(body)


def test_a_jobs_tasks_carry_its_constraints_and_the_templates() -> None:
    made = job(Constraints=[ZONE_A], Task={"Image": "x", "Constraints": [SSD]}).make_task()
    assert [str(c) for c in made.Constraints or ()] == ["zone = a", "disk exists"]
    assert not made.DistinctHosts
    assert job(DistinctHosts=True).make_task().DistinctHosts
    assert job(Task={"Image": "x", "DistinctHosts": True}).make_task().DistinctHosts
    plain = job().make_task(Name="web-v1")
    assert (plain.Constraints, plain.DistinctHosts, plain.Name) == (None, False, "web-v1")


@pytest.mark.parametrize(
    ("change", "new_version"),
    [
        ({"Constraints": [ZONE_A]}, True),
        ({"DistinctHosts": True}, True),
        ({"Task": {"Image": "x", "Constraints": [SSD]}}, True),
        ({"Constraints": []}, False),  # no constraints, said differently
        ({"Count": 4}, False),
    ],
)
def test_placement_is_part_of_a_version(change: dict[str, Any], new_version: bool) -> None:
    assert (job().spec() != job(**change).spec()) is new_version


# --- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "labels"),
    [
        ([], {}),
        (["zone=a"], {"zone": "a"}),
        (["zone=a", "disk=ssd"], {"zone": "a", "disk": "ssd"}),
        (["url=http://x/?a=b"], {"url": "http://x/?a=b"}),  # the first = splits
        (["rack="], {"rack": ""}),
        ([" zone = a "], {"zone": "a"}),
        (["example.com/tier=web"], {"example.com/tier": "web"}),
    ],
)
def test_parse_labels(items: list[str], labels: dict[str, str]) -> None:
    assert parse_labels(items) == labels


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["zone"], "invalid label 'zone': expected NAME=VALUE, e.g. zone=a"),
        (["=a"], "invalid label name '': use 1 to 63 of letters"),
        (["-x=a"], "invalid label name '-x'"),
        (["a b=c"], "invalid label name 'a b'"),
        (["x" * 64 + "=a"], "invalid label name"),
        (["os=windows"], "label 'os' is a built-in attribute"),
        (["memory=1"], "label 'memory' is a built-in attribute"),
        (["zone=a", "zone=b"], "label 'zone' given twice"),
    ],
)
def test_bad_labels_are_refused_in_one_line(items: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_labels(items)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_builtin_attributes_describe_this_machine() -> None:
    attributes = builtin_attributes()
    assert set(attributes) == BUILTIN
    assert attributes["hostname"] == socket.gethostname()
    assert attributes["os"] == platform.system().lower() == "linux"
    assert attributes["arch"] == platform.machine().lower()
    assert attributes["cores"] == str(os.cpu_count())
    assert int(attributes["memory"]) == psutil.virtual_memory().total > 0
