"""The fast log formatter writes exactly the lines the generic one would."""

from __future__ import annotations

import logging
import sys

import pytest

from cube.config import LOG_FORMAT, LineFormatter


@pytest.mark.parametrize("created", [1.0, 1_700_000_000.9995, 1_700_000_001.0004, 1_732_000_000.5])
def test_lines_are_those_of_the_generic_formatter(created: float) -> None:
    fast, generic = LineFormatter(), logging.Formatter(LOG_FORMAT)
    for when in (created, created + 0.25, created + 1.0):  # the same second, and the next
        record = logging.LogRecord("cube.x", logging.INFO, "f", 1, "task %s: %s", ("t", 5), None)
        record.created, record.msecs = when, int((when - int(when)) * 1000)
        assert fast.format(record) == generic.format(record)


def test_a_traceback_is_formatted_as_the_generic_formatter_does() -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("cube.x", logging.ERROR, "f", 1, "failed %d", (3,), exc_info)
    line = LineFormatter().format(record)
    assert line == logging.Formatter(LOG_FORMAT).format(record)
    assert line.endswith("ZeroDivisionError: boom")
