"""Reading what people hand to ``cube run -f``: a TaskEvent or a bare task, JSON or YAML.

The book's files are TaskEvents (``{"State": 2, "Task": {...}}``); people writing a
task by hand want to write just the task, and often in YAML. Both work. Nothing is
validated here beyond "is it a mapping": the manager validates, and its message names
the field, so there is one set of rules and one wording.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cube.cli.errors import CliError
from cube.task import State

STDIN = "-"


def read_text(filename: str) -> str:
    if filename == STDIN:
        return sys.stdin.read()
    try:
        return Path(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"cannot read {filename}: no such file") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {filename}: not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"cannot read {filename}: {exc.strerror or exc}") from None


def syntax_of(filename: str, text: str) -> str:
    """JSON or YAML, by extension; by content when there is none (stdin, task.txt)."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if text.lstrip().startswith(("{", "[")) else "yaml"


def parse_document(text: str, syntax: str, source: str) -> dict[str, Any]:
    """Parse one JSON or YAML object, with errors that point at the line."""
    data: Any
    if syntax == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"invalid JSON in {source}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = exc.problem or exc.context or "syntax error"
            raise CliError(f"invalid YAML in {source}: {problem}{where}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"invalid YAML in {source}: {exc}") from None
    if data is None:
        raise CliError(f"{source} is empty: expected a task or a TaskEvent")
    if not isinstance(data, dict):
        raise CliError(
            f"{source} must hold one object (a task or a TaskEvent), not a {type(data).__name__}"
        )
    # YAML can hold dates and other things JSON cannot; the API speaks JSON.
    plain: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return plain


def is_task_event(document: Mapping[str, Any]) -> bool:
    """A TaskEvent wraps its task under ``Task``; a bare task never has that field."""
    return "Task" in document


def event_body(document: Mapping[str, Any]) -> dict[str, Any]:
    """The TaskEvent to POST: the document itself, or a bare task wrapped in a run request.

    IDs of a bare task are generated here rather than by the manager, so that the
    request carries them and a retried submission is recognised as the same task.
    """
    if is_task_event(document):
        return dict(document)
    task = {"ID": str(uuid.uuid4()), **document}
    return {"ID": str(uuid.uuid4()), "State": int(State.RUNNING), "Task": task}


def load_event(filename: str) -> dict[str, Any]:
    source = "standard input" if filename == STDIN else filename
    text = read_text(filename)
    return event_body(parse_document(text, syntax_of(filename, text), source))
