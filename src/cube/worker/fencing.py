"""Fencing: a worker takes commands from the newest leadership only.

With several managers, one leads at a time, and each leadership has a term (the etcd
revision at which its leader key was made: it only grows). A manager that led sends
its term on every request (``X-Cube-Term``); the worker keeps the highest it has seen
and refuses an older one with a 409, so a deposed manager that has not noticed yet (a
long GC pause, a cut link to etcd) cannot undo what the new leader asked for. A
request without the header is taken as before: a single manager, the book's clients,
the CLI talking to a worker directly.

The highest term is kept in a file next to the worker's database when it has one, so
a restarted worker still refuses a deposed leader; in memory otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = "X-Cube-Term"
MAX_TERM = 2**63 - 1  # an etcd revision is an int64
_DIGITS = re.compile(r"[0-9]{1,19}")


class BadTerm(ValueError):
    """The header is not a term (the API answers 400)."""


class StaleTerm(Exception):
    """A request from an older term than the one that now leads (the API answers 409)."""

    def __init__(self, term: int, newest: int) -> None:
        super().__init__(
            f"refused: term {term} is older than term {newest}, which now leads "
            "(a deposed manager's command)"
        )
        self.term = term
        self.newest = newest


def parse_term(text: str) -> int:
    """A term as the header spells it: a non-negative integer, digits only."""
    value = text.strip()
    if not _DIGITS.fullmatch(value) or int(value) > MAX_TERM:
        raise BadTerm(f"{HEADER}: expected a non-negative integer (a leader's term), not {text!r}")
    return int(value)


class Fence:
    """The highest term seen; ``path``: where it is kept across restarts (None: memory)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.term: int | None = self._load()

    def _load(self) -> int | None:
        if self.path is None:
            return None
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return parse_term(text)
        except BadTerm:
            # Written whole or not at all (see _save): this is no file of ours.
            raise ValueError(f"{self.path}: not a term: {text[:40]!r}") from None

    def admit(self, term: int) -> bool:
        """Take a request of ``term``: raise StaleTerm if a newer one leads; return
        whether ``term`` is new (it now leads, and is kept)."""
        if self.term is not None and term < self.term:
            raise StaleTerm(term, self.term)
        if self.term == term:
            return False
        self.term = term
        log.info("now led by term %d", term)
        self._save(term)
        return True

    def leads(self, term: int | None) -> bool:
        """Whether a request of ``term`` (None: sent none) would still be taken."""
        return term is None or self.term is None or term >= self.term

    def _save(self, term: int) -> None:
        """Write a temporary file and rename it over the old one: a crash leaves the
        old term or the new one, never half a number. A failed write keeps the term in
        memory (this process still refuses older ones) and says so."""
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("w") as file:
                file.write(f"{term}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            log.error("cannot keep term %d in %s: %s (kept in memory only)", term, self.path, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()
