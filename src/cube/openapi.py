"""The OpenAPI document each server serves, made exact in one place.

FastAPI's generated document is close to what Cube answers, not exact: it adds a 422 to
every route with a parameter (Cube answers malformed input with a 400, see
cube.errors), it cannot see a body a route reads by hand (``POST /tasks`` takes one
TaskEvent or an array of them), and it does not know what a guard answers. Rather than
each route remembering, :func:`install` post-processes the document once:

- no 422 anywhere, and a 400 (:class:`ErrorBody`) on exactly the routes whose input can
  be malformed: a body, a required query parameter, or a parameter that is not just any
  string (a task ID is a UUID); a route with only plain path names (``DELETE
  /nodes/{name}``) can never answer one;
- every route secured by a scheme in ``guards`` answers what that guard answers (401
  without a good token, 403 for a read token writing), unless the route says otherwise;
- the models of bodies read by hand (:func:`body`, :func:`content`) join the document's
  components like any other;
- every model's title is unique, as a generated client names its classes by the
  titles (openapi-python-client does): the two halves of a model seen both as input and
  as output (``Task-Input``, ``Task``) are titled by their names (``TaskInput``), not both
  by the model's (``Task``), which would leave a client with one of them.

A unit test walks both served documents and checks these rules for every route.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import Schema
from pydantic import BaseModel, TypeAdapter

Responses = dict[int | str, dict[str, Any]]
Guard = Callable[[str], dict[int, str]]  # an HTTP method -> what the guard may answer it
_REF = "#/components/schemas/{model}"
_PREFIX = _REF.format(model="")


class ErrorBody(BaseModel):
    """Every error answer (the book's ``ErrResponse``)."""

    HTTPStatusCode: int
    Message: str


def errors(**answers: str) -> Responses:
    """Error answers for a route's ``responses``: ``errors(e404="No such job")``."""
    return {
        int(code.removeprefix("e")): {"model": ErrorBody, "description": description}
        for code, description in answers.items()
    }


def schema(annotation: Any, mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    """A type's JSON schema, its models as references to the document's components
    (:func:`install` moves the ``$defs`` there). Made once per type: an app is built at
    every start of a worker or manager (many, in the simulator), and a schema costs
    tens of milliseconds; each caller gets a copy of its own to change."""
    return copy.deepcopy(_schema(annotation, mode))


@functools.cache
def _schema(annotation: Any, mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    found = TypeAdapter(annotation).json_schema(mode=mode, ref_template=_REF)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A model is a component of its own, as FastAPI makes one, not inlined.
        defs = found.pop("$defs", {})
        defs[annotation.__name__] = found
        found = {"$ref": _REF.format(model=annotation.__name__), "$defs": defs}
    # As FastAPI writes its own (through its OpenAPI model: 0 becomes 0.0), so that a
    # model found both ways is seen to be the same.
    return jsonable_encoder(Schema(**found), by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


def body(annotation: Any, description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema(annotation, "validation")}},
        }
    }


def content(media_type: str, annotation: Any) -> dict[str, Any]:
    """A response's ``content`` entry for a body serialised by hand."""
    return {media_type: {"schema": schema(annotation, "serialization")}}


def install(
    app: FastAPI, guards: Mapping[str, Guard] | None = None, unavailable: str | None = None
) -> None:
    """Serve the exact document (see the module's docstring) at /openapi.json and /docs.

    ``unavailable``: every route may answer 503 for this reason (a manager on etcd, when
    etcd or the leader does not answer)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = exact(build(), guards or {}, unavailable)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def exact(
    document: dict[str, Any], guards: Mapping[str, Guard], unavailable: str | None = None
) -> dict[str, Any]:
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if "ErrorBody" not in components:  # no route named it: the 400s below still do
        components["ErrorBody"] = schema(ErrorBody, "serialization")["$defs"]["ErrorBody"]
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            _hoist(operation, components)
            answers = operation.setdefault("responses", {})
            answers.pop("422", None)
            wanted: dict[int, str] = {}
            if _malformable(operation):
                wanted[400] = "Malformed request; Message says why"
            for requirement in operation.get("security", []):
                for scheme in requirement:
                    if scheme in guards:
                        wanted.update(guards[scheme](method.upper()))
            if unavailable:
                wanted[503] = unavailable
            for code, description in sorted(wanted.items()):
                answers.setdefault(str(code), _error(description))
    _title(components)
    return document


def _title(components: dict[str, Any]) -> None:
    """Title each half of a split model (``Job-Input``, ``Job-Output``) by its name
    without the dash, as generators that name classes by the components' names make it
    (pydantic titles both ``Job``); then every title is a class name of its own."""
    for name, found in components.items():
        if name.endswith(("-Input", "-Output")):
            found["title"] = name.replace("-", "")
    titles: dict[str, str] = {}
    for name, found in components.items():
        title = found.get("title", name)
        if titles.setdefault(title, name) != name:
            raise RuntimeError(f"{titles[title]!r} and {name!r} are both titled {title!r}")


def _error(description: str) -> dict[str, Any]:
    ref = {"$ref": _REF.format(model="ErrorBody")}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_ANY_STRING = (
    {"type": "string"},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
)
_NOTES = frozenset({"title", "description", "default", "examples"})


def _malformable(operation: Mapping[str, Any]) -> bool:
    """Whether a request to this operation can be malformed (and so answered 400)."""
    if "requestBody" in operation:
        return True
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path" and parameter.get("required"):
            return True  # it can be missing
        shape = {k: v for k, v in parameter.get("schema", {}).items() if k not in _NOTES}
        if shape not in _ANY_STRING:
            return True  # a number, a flag, a UUID...: something else can be sent
    return False


def _hoist(operation: dict[str, Any], components: dict[str, Any]) -> None:
    """Move the ``$defs`` of hand-made schemas (:func:`body`, :func:`content`) into the
    components. A model already there under the same name with another schema (the
    same model seen as input and as output: a Task's times are optional in, strings
    out) gets the ``-Input``/``-Output`` suffix FastAPI itself gives such a pair."""
    places = [operation.get("requestBody", {})]
    places += operation.get("responses", {}).values()
    for place in places:
        for media in place.get("content", {}).values():
            found = media.get("schema", {})
            defs = found.pop("$defs", None)
            if defs:
                suffix = "-Input" if place is places[0] else "-Output"
                media["schema"] = _merge(found, defs, components, suffix)


def _merge(
    found: dict[str, Any], defs: dict[str, Any], components: dict[str, Any], suffix: str
) -> dict[str, Any]:
    renames: dict[str, str] = {}
    while True:  # a renamed model changes those that refer to it: until nothing does
        moved = {name: _rename(schema, renames) for name, schema in defs.items()}
        clash = {
            name
            for name, schema in moved.items()
            if name not in renames and components.get(name, schema) != schema
        }
        if not clash:
            break
        renames.update({name: name + suffix for name in clash})
    for name, schema in moved.items():
        target = renames.get(name, name)
        if components.setdefault(target, schema) != schema:
            raise RuntimeError(f"two different schemas for {target!r} in the OpenAPI document")
    return _rename(found, renames)  # type: ignore[no-any-return]


def _rename(value: Any, renames: Mapping[str, str]) -> Any:
    if not renames:
        return value
    text = json.dumps(value)
    for old, new in renames.items():
        text = text.replace(f'"{_PREFIX}{old}"', f'"{_PREFIX}{new}"')
    return json.loads(text)


def ok(annotation: Any, status: int = 200, description: str = "Success") -> Responses:
    """A success answer for a route's ``responses``, when the route serialises its body
    itself (``response_model=None``)."""
    return {status: {"model": annotation, "description": description}}


def merged(*parts: Responses) -> Responses:
    """Several ``responses`` entries as one: the same status's fields joined (a body
    from :func:`ok`, headers from another)."""
    found: Responses = {}
    for part in parts:
        for status, answer in part.items():
            found[status] = {**found.get(status, {}), **answer}
    return found
