"""Set-up shared by every process: the fast log formatter (exactly the generic one's
lines), lines logged together, and the garbage collector's settings."""

from __future__ import annotations

import gc
import io
import logging
import sys
from collections.abc import Iterator
from unittest.mock import patch

import pytest

from cube.config import LOG_FORMAT, LineFormatter, log_lines, tune_gc


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


def test_lines_logged_together_are_the_lines_logged_one_by_one() -> None:
    """log_lines writes one record, whose lines are each what a record of its own
    would have written (same time stamp, level and logger)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger("cube.test_lines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with patch("time.time", return_value=1_700_000_000.25):
            log_lines(logger, logging.INFO, (f"task {i}: placed on w{i}" for i in range(3)))
            for i in range(3):
                logger.info("task %s: placed on w%s", i, i)
            log_lines(logger, logging.DEBUG, iter(["not written"]))
            log_lines(logger, logging.INFO, [])
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[:3] == lines[3:]
    assert lines[0].endswith(" INFO cube.test_lines: task 0: placed on w0")


def test_lines_are_not_made_below_the_level() -> None:
    logger = logging.getLogger("cube.test_lines_quiet")
    logger.setLevel(logging.WARNING)

    def lines() -> Iterator[str]:
        raise AssertionError("read although nothing is logged")
        yield ""

    log_lines(logger, logging.INFO, lines())


def test_tune_gc_freezes_start_up_and_collects_the_middle_generation_every_other_time() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (50_000, 1, 50)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
