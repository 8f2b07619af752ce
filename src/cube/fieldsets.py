"""One set of field names per distinct set, shared by the model instances that have it.

pydantic keeps on every instance the names of the fields it was given
(``__pydantic_fields_set__``), in a set of that instance's own. The manager keeps tens
of thousands of task versions, task events, cluster events and placement records, and
each such set is one more container that every garbage collection walks: about a
quarter of the manager's tracked objects in the scale benchmark, for sets that hold
the same few combinations of names. Cube's models are values (a change is a new
version, never an assignment to a field) and Cube never asks which fields were given
(no ``exclude_unset``), so instances with the same names share one set.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Any, TypeVar, cast

from pydantic import BaseModel

_M = TypeVar("_M", bound=BaseModel)
_SETS: dict[frozenset[str], set[str]] = {}
_SHARED: set[int] = set()  # id() of each set in _SETS (they live as long as the process)


def shared(names: Set[str], more: Iterable[str] = ()) -> set[str]:
    """The shared set of ``names`` and ``more``: ``names`` itself when it is one
    already and ``more`` adds nothing (the usual case, at no cost)."""
    if id(names) in _SHARED:
        known = cast(set[str], names)  # one of _SETS
        if known.issuperset(more):
            return known
    key = frozenset(names).union(more)
    found = _SETS.get(key)
    if found is None:
        found = _SETS[key] = set(key)
        _SHARED.add(id(found))
    return found


def share(model: _M) -> _M:
    """``model``, its set of given fields replaced by the shared one."""
    object.__setattr__(model, "__pydantic_fields_set__", shared(model.__pydantic_fields_set__))
    return model


def construct(cls: type[_M], fields: dict[str, Any], private: dict[str, Any] | None = None) -> _M:
    """A model of values already checked, every field given (``fields`` has them all),
    as ``model_construct`` makes it in a third of its time, and in less than a
    validation's: for the records made for every change of every task (cluster
    events, placement decisions). ``private``: its private attributes, if it has any."""
    made = _new(cls)
    _set(made, "__dict__", fields)
    _set(made, "__pydantic_fields_set__", _all_fields(cls))
    _set(made, "__pydantic_extra__", None)
    _set(made, "__pydantic_private__", private)
    return made


def _all_fields(cls: type[BaseModel]) -> set[str]:
    """The shared set of every field of ``cls`` (found once per class, not per model)."""
    names = _ALL_FIELDS.get(cls)
    if names is None:
        names = _ALL_FIELDS[cls] = shared(cls.model_fields.keys())
    return names


_new = object.__new__
_set = object.__setattr__
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}
