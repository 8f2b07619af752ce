"""Progress while the CLI waits (`cube run --wait`, `cube job run`): live on a terminal.

Either way, each change is a line that stays. On a terminal, below those lines, a
spinner says how long the wait has lasted and, for a job, a table shows its tasks as
they are now (Rich's Live, redrawn in place, gone when the wait ends). Piped or
redirected, nothing moves: just the lines, so logs and scripts read the same text.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from cube.cli import format as fmt


class Progress:
    """``show(line, detail)``: ``line`` is printed when it changes; on a terminal,
    ``detail`` (a table, say) is shown below a spinner until the next call."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or fmt.console()
        self.quiet = quiet
        self.live: Live | None = None
        self._last = ""
        self._since = time.monotonic()

    @property
    def interactive(self) -> bool:
        """Whether ``detail`` is shown (worth fetching)."""
        return self.live is not None

    def __enter__(self) -> Progress:
        if self.console.is_terminal and not self.quiet:
            self.live = Live(console=self.console, refresh_per_second=8, transient=True)
            self.live.start()
        return self

    def show(self, line: str, detail: RenderableType | None = None) -> None:
        if self.quiet:
            return
        if line != self._last:
            self._last = line
            if self.live is not None:
                self.live.console.print(Text(line), soft_wrap=True)  # above the live part
            else:
                # The text as it is (no markup, emoji codes or wrapping), as print() had it.
                self.console.file.write(line + "\n")
                self.console.file.flush()
        if self.live is not None:
            waited = Text(f"waiting, {time.monotonic() - self._since:.0f}s")
            spinner = Spinner("dots", waited, style="cyan")
            self.live.update(spinner if detail is None else Group(spinner, detail))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()
