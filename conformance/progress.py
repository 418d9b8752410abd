"""Progress of long work on stderr, the same for every command (check on a large stream, the
matrix, fuzzing campaigns): rich's bar on a terminal; when stderr is not a terminal (CI
logs), one plain line every `every` seconds, so a log shows the run is alive without a line
per step.

Here, below every room, so that a tool reports progress without importing the command line."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, what: str, total: float | None = None, *, unit: str = "", stream: TextIO | None = None,
                 enabled: bool = True, every: float = 5.0):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._last = time.monotonic()
        self._bar = self._task = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as Bar, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                            console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total, note="")

    def update(self, done: float, total: float | None = None, note: str = "") -> None:
        if not self.enabled:
            return
        total = total if total is not None else self.total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, note=note)
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        of = f"/{total:g}" if total else ""
        self.stream.write(f"{self.what}: {done:g}{of}{self.unit}{'  ' + note if note else ''}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
