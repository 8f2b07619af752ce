"""Finding a task from what people type: a full ID or the start of one, like Nomad and git.

Tables show 8-character IDs; a prefix is accepted only when exactly one task has
it, because stopping the wrong task is worse than asking for two more characters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from cube.cli.errors import CliError

SHOWN = 3


def parse_full_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def match_prefix(text: str, ids: Iterable[uuid.UUID]) -> uuid.UUID:
    """The one ID starting with ``text`` (dashes and case ignored), or a CliError saying why not."""
    prefix = text.strip().lower().replace("-", "")
    if not prefix:
        raise CliError("a task ID or ID prefix is required")
    found = sorted({i for i in ids if i.hex.startswith(prefix)}, key=str)
    if not found:
        raise CliError(f"no task with an ID starting with {text.strip()!r}")
    if len(found) > 1:
        shown = ", ".join(str(i)[:13] for i in found[:SHOWN])
        more = ", ..." if len(found) > SHOWN else ""
        raise CliError(
            f"task ID prefix {text.strip()!r} is ambiguous: it matches {len(found)} tasks "
            f"({shown}{more}); type more characters"
        )
    return found[0]
