"""One progress display for long jobs (inference folders, training, benchmarks).

A rich bar on stderr when it is a terminal; nothing but plain lines when output goes to a log
(CI, files), so logs stay readable (docs/design.md section 11).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    """``with ProgressBar("inpainting", total) as bar: bar.advance(); bar.line("...")``.

    ``fields`` names extra text columns (e.g. ``{"loss": ""}``) updated through ``advance(**fields)``.
    ``unit`` shows a rate column ("images/s") computed from the steps advanced since start.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        completed: int = 0,
        enabled: bool = True,
        unit: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.fields = dict(fields or {})
        self.enabled = enabled and bool(total) and sys.stderr.isatty()
        self.bar: Any = None
        self.start_done = completed
        self.done = completed
        self.started = time.monotonic()

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = [TextColumn(self.label), BarColumn(bar_width=30), MofNCompleteColumn()]
            columns += [TextColumn(f"{{task.fields[{name}]}}") for name in self.fields]
            if self.unit:
                columns.append(TextColumn("{task.fields[_rate]}"))
            columns.append(TimeElapsedColumn())
            self.bar = Progress(*columns, console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task(self.label, total=self.total, completed=self.done, _rate="", **self.fields)
            self.bar.start()
        return self

    def advance(self, steps: int = 1, **fields: str) -> None:
        self.done += steps
        if self.bar is None:
            return
        self.fields.update(fields)
        rate = ""
        if self.unit:
            per_s = (self.done - self.start_done) / max(time.monotonic() - self.started, 1e-9)
            rate = f"{per_s:.1f} {self.unit}"
        self.bar.update(self.task, completed=self.done, _rate=rate, **self.fields)

    def line(self, text: str) -> None:
        """A line above the bar (or on stderr when there is no bar): failures, loss terms."""
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
