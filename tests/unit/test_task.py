"""The task model, its wire format and its state machine."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cube.task import (
    TRANSITIONS,
    ZERO_TIME,
    InvalidTransition,
    State,
    Task,
    TaskEvent,
    can_transition,
    is_terminal,
    parse_size,
    random_ids,
    transition,
)

BOOK_EVENT = """{
    "ID": "266592cd-960d-4091-981c-8c25c44b1018",
    "State": 2,
    "Task": {
        "State": 1,
        "ID": "266592cd-960d-4091-981c-8c25c44b1018",
        "Name": "test-chapter-5-1",
        "Image": "strm/helloworld-http",
        "Memory": 0,
        "Disk": 0,
        "ExposedPorts": null,
        "PortBindings": null,
        "RestartPolicy": "",
        "StartTime": "0001-01-01T00:00:00Z",
        "FinishTime": "0001-01-01T00:00:00Z"
    }
}"""

# The table of SPEC.md §2, written out independently of the code under test.
ALLOWED = {
    (State.PENDING, State.SCHEDULED),
    (State.PENDING, State.COMPLETED),
    (State.SCHEDULED, State.SCHEDULED),
    (State.SCHEDULED, State.RUNNING),
    (State.SCHEDULED, State.FAILED),
    (State.SCHEDULED, State.COMPLETED),
    (State.RUNNING, State.RUNNING),
    (State.RUNNING, State.COMPLETED),
    (State.RUNNING, State.FAILED),
    (State.RUNNING, State.SCHEDULED),
    (State.FAILED, State.SCHEDULED),
}


def test_book_event_parses_unchanged() -> None:
    event = TaskEvent.model_validate_json(BOOK_EVENT)
    assert event.State is State.RUNNING
    assert uuid.UUID("266592cd-960d-4091-981c-8c25c44b1018") == event.Task.ID
    assert event.Task.State is State.SCHEDULED
    assert event.Task.StartTime is None
    assert event.Task.ExposedPorts is None


def test_wire_uses_book_names_and_zero_time() -> None:
    wire = Task(Image="nginx").to_wire()
    assert wire["State"] == 0
    assert wire["StartTime"] == ZERO_TIME
    assert wire["FinishTime"] == ZERO_TIME
    assert {
        "ID",
        "Name",
        "Image",
        "Cpu",
        "Memory",
        "Disk",
        "ExposedPorts",
        "PortBindings",
        "HostPorts",
        "RestartPolicy",
        "HealthCheck",
        "RestartCount",
        "ContainerID",
    } <= set(wire)
    uuid.UUID(wire["ID"])
    json.dumps(wire)


def test_times_round_trip_in_rfc3339() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    wire = Task(Image="x", StartTime=at).to_wire()
    assert wire["StartTime"] == "2026-01-02T03:04:05Z"
    assert Task.model_validate(wire).StartTime == at


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("running", State.RUNNING),
        ("Completed", State.COMPLETED),
        ("PENDING", State.PENDING),
        (4, State.FAILED),
        ("1", State.SCHEDULED),
    ],
)
def test_state_accepts_numbers_and_names(text: object, state: State) -> None:
    assert Task.model_validate({"Image": "x", "State": text}).State is state


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Image": "x", "Colour": "red"}, "Colour"),
        ({"Name": "no image"}, "Image"),
        ({"Image": " "}, "Image is required"),
        ({"Image": "x", "State": "sleeping"}, "unknown state"),
        ({"Image": "x", "State": 9}, "State"),
        ({"Image": "x", "Memory": "lots"}, "invalid size"),
        ({"Image": "x", "Memory": -1}, "Memory"),
        ({"Image": "x", "Env": ["NOEQUALS"]}, "KEY=VALUE"),
        ({"Image": "x", "ExposedPorts": {"http": {}}}, "invalid port"),
        ({"Image": "x", "PortBindings": {"80/tcp": "eighty"}}, "port number"),
        ({"Image": "x", "HealthCheck": "health"}, "URL path"),
        ({"Image": "x", "RestartPolicy": "sometimes"}, "RestartPolicy"),
        ({"Image": "x", "ID": "not-a-uuid"}, "ID"),
        ({"Image": "x", "Cpu": float("inf")}, "finite"),
        ({"Image": "x", "Cpu": float("nan")}, "finite"),
        ({"Image": "x", "Memory": "99999999999999999999GiB"}, "too large"),
        ({"Image": "x", "Disk": 2**70}, "less than or equal"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(
    body: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Task.model_validate(body)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 1024**2),
        ("1GiB", 1024**3),
        ("1GB", 10**9),
        ("512", 512),
        ("1.5KiB", 1536),
        ("64 mb", 64 * 10**6),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert Task(Image="x", Memory=text).Memory == size  # type: ignore[arg-type]


def test_host_ports_pick_the_first_published_port() -> None:
    task = Task(Image="x", HostPorts={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}]})
    assert task.first_host_port() == 49153
    assert Task(Image="x").first_host_port() is None


def test_container_ports_merge_exposed_and_bound() -> None:
    task = Task(Image="x", ExposedPorts={"80/tcp": {}}, PortBindings={"443/tcp": "8443"})
    assert task.container_ports() == ["80/tcp", "443/tcp"]


def test_table_matches_the_spec() -> None:
    actual = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert actual == ALLOWED
    assert is_terminal(State.COMPLETED)
    assert not is_terminal(State.FAILED)


@given(st.sampled_from(State), st.sampled_from(State))
def test_transition_obeys_the_table(src: State, dst: State) -> None:
    task = Task(Image="x", State=src)
    if (src, dst) in ALLOWED:
        moved = transition(task, dst)
        assert moved.State is dst
        assert task.State is src  # the original is untouched
        assert can_transition(src, dst)
    else:
        with pytest.raises(InvalidTransition):
            transition(task, dst)
        assert not can_transition(src, dst)


def test_times_follow_the_state() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    running = transition(Task(Image="x", State=State.SCHEDULED), State.RUNNING, at=at)
    assert running.StartTime == at and running.FinishTime is None
    done = transition(running, State.FAILED, reason="exited with code 1")
    assert done.FinishTime is not None and done.Reason == "exited with code 1"
    again = transition(done.model_copy(update={"ContainerID": "abc"}), State.SCHEDULED)
    assert again.ContainerID == "" and again.StartTime is None and again.FinishTime is None


def test_invalid_transition_message_names_both_states() -> None:
    with pytest.raises(InvalidTransition, match="from Completed to Scheduled"):
        transition(Task(Image="x", State=State.COMPLETED), State.SCHEDULED)


def test_model_copy_is_pydantics_shallow_copy() -> None:
    """Task and TaskEvent copy faster than pydantic's generic copy, and the same."""
    from pydantic import BaseModel

    task = Task(Image="img", Cmd=["sleep", "1"], Env=["A=1"])
    update = {"Node": "w1:1", "State": State.SCHEDULED}
    ours, theirs = task.model_copy(update=update), BaseModel.model_copy(task, update=update)
    assert ours == theirs and ours.model_fields_set == theirs.model_fields_set
    assert ours.model_dump_json() == theirs.model_dump_json()
    assert task.Node == "" and task.model_fields_set == {"Image", "Cmd", "Env"}  # untouched
    assert ours.Cmd is task.Cmd  # shallow, as pydantic's
    deep = task.model_copy(deep=True)
    assert deep == task and deep.Cmd is not task.Cmd
    event = TaskEvent(Task=task)
    moved = event.model_copy(update={"Task": ours})
    assert moved.Task is ours and event.Task is task and moved.ID == event.ID


def test_random_ids_are_the_uuids_uuid4_makes() -> None:
    """Made without ``UUID.__init__``: each must still be a version 4 UUID of RFC 4122's
    variant, equal to and hashed as the same UUID parsed from its text."""
    ids = random_ids(500)
    assert len(set(ids)) == 500 and random_ids(0) == []
    for made in ids:
        parsed = uuid.UUID(str(made))
        assert made.version == 4 and made.variant == uuid.RFC_4122
        assert parsed == made and hash(parsed) == hash(made) and parsed.int == made.int
        assert made.is_safe is uuid.SafeUUID.unknown
