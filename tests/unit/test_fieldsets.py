"""Task versions, events and placement records share their sets of given fields."""

from __future__ import annotations

from datetime import UTC, datetime

from cube.events import Draft, Event
from cube.explain import Decision, NodeScore, decide
from cube.fieldsets import shared
from cube.task import State, Task, TaskEvent, recorded, transition


def test_versions_of_tasks_share_one_set_per_combination_of_fields() -> None:
    a, b = Task(Image="a"), Task(Image="b")
    a2, b2 = transition(a, State.SCHEDULED), transition(b, State.SCHEDULED)
    assert a2.__pydantic_fields_set__ is b2.__pydantic_fields_set__
    assert a2.model_fields_set == a.model_fields_set | {"State", "Reason"}
    a3 = a2.model_copy(update={"Node": "w"})
    assert a3.model_fields_set == a2.model_fields_set | {"Node"}
    assert transition(b2, State.RUNNING, also={"Node": "w"}).__pydantic_fields_set__ is (
        transition(a2, State.RUNNING, also={"Node": "w"}).__pydantic_fields_set__
    )
    assert a.__pydantic_fields_set__ is not a2.__pydantic_fields_set__  # a's own, as made
    assert a == Task(Image="a", ID=a.ID)  # equality is by values still


def test_events_and_decisions_share_theirs() -> None:
    task = Task(Image="i")
    now = datetime.now(UTC)
    first, second = (Event.of(i, now, Draft.of("Task", "TaskPlaced", "k", task)) for i in (1, 2))
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    one, two = (
        decide("epvm", 2, {}, {"a": 1.0, "b": 2.0}, "a"),
        decide("epvm", 1, {}, {"b": 3.0}, "b"),
    )
    assert one.__pydantic_fields_set__ is two.__pydantic_fields_set__
    # A score is a slotted value: no set of its own, nor a dict, to share.
    assert type(one.TopScores[0]) is NodeScore and not hasattr(one.TopScores[0], "__dict__")
    assert one.model_dump()["TopScores"] == [
        {"Node": "a", "Score": 1.0},
        {"Node": "b", "Score": 2.0},
    ]


def test_a_record_constructed_is_the_record_validated() -> None:
    """Decisions are constructed, not validated (once per placement): the same value,
    the same JSON, every field set, and no alias of the scheduler's own counts."""
    filtered = {"memory": 2}
    made = decide("epvm", 3, filtered, {"a": 1.0, "b": float("inf")}, "b")
    checked = Decision.model_validate(made.model_dump())
    assert made == checked and made.model_dump_json() == checked.model_dump_json()
    assert Decision.model_validate_json(made.model_dump_json()) == made
    assert made.model_fields_set == set(Decision.model_fields)
    assert all(type(score) is NodeScore for score in (*made.TopScores, *checked.TopScores))
    filtered["memory"] = 5
    assert made.NodesFiltered == {"memory": 2}


def test_a_recorded_task_event_is_the_event_validated() -> None:
    """A placement's TaskEvent is constructed (once per placement): the same value and
    JSON as validated, a fresh ID each, one time for the batch, the very task kept."""
    tasks = [Task(Image="i", State=State.SCHEDULED, Node="w1"), Task(Image="j")]
    made = recorded(State.SCHEDULED, tasks)
    for event, task in zip(made, tasks, strict=True):
        checked = TaskEvent.model_validate(event.model_dump())
        assert event == checked and event.model_dump_json() == checked.model_dump_json()
        assert event.Task is task and event.model_fields_set == set(TaskEvent.model_fields)
    assert made[0].ID != made[1].ID and made[0].Timestamp == made[1].Timestamp
    assert made[0].Timestamp.tzinfo is not None


def test_a_shared_set_is_found_again_and_extended_into_another() -> None:
    base = shared({"A", "B"})
    assert shared(frozenset({"B", "A"})) is base
    assert shared(base) is base and shared(base, ["A"]) is base
    wider = shared(base, ["C"])
    assert wider == {"A", "B", "C"} and base == {"A", "B"}
    event = TaskEvent(State=State.SCHEDULED, Task=Task(Image="i"))
    assert event.model_copy(update={"State": State.RUNNING}).model_fields_set == {"State", "Task"}
