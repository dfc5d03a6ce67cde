"""The rich live view on a terminal: one row per step, recent log lines, a summary at the end.

Events only update a small state model (:class:`RunView`); ``rich.live.Live`` redraws it a few
times a second on its own timer, so a container writing 100,000 lines a second costs one render
per tick, not one per line.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kliko_async.events import Event, RunFinished

LOG_LINES_SHOWN = 3
_STYLES = {
    "waiting": "dim",
    "running": "bold yellow",
    "cached": "cyan",
    "done": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "magenta",
    "building": "yellow",
}


@dataclass
class StepView:
    name: str
    image: str = ""
    state: str = "waiting"
    started: float | None = None
    duration: float | None = None
    detail: str = ""
    attempt: int = 1
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES_SHOWN))


class RunView:
    """What the screen shows, updated from events, drawn by rich via ``__rich_console__``."""

    def __init__(self) -> None:
        self.run_id = ""
        self.jobs = 0
        self.steps: dict[str, StepView] = {}
        self.finished: RunFinished | None = None
        self.failed_logs: dict[str, str] = {}

    def step(self, name: str) -> StepView:
        view = self.steps.get(name)
        if view is None:
            view = self.steps[name] = StepView(name)
        return view

    def update(self, event: Event) -> None:
        match event.kind:
            case "log_line":
                self.step(event.step).lines.append(event.text)
            case "run_started":
                self.run_id, self.jobs = event.run_id, event.jobs
                for name in event.steps:
                    self.step(name).image = event.images.get(name, "")
            case "image_building":
                self.step(event.step).state = "building"
            case "step_cached":
                view = self.step(event.step)
                view.state, view.duration = "cached", event.original_duration_s
            case "step_started":
                view = self.step(event.step)
                view.state, view.started, view.attempt = "running", time.monotonic(), event.attempt
            case "step_finished":
                view = self.step(event.step)
                view.state, view.duration = "done", event.duration_s
            case "step_failed":
                view = self.step(event.step)
                view.state = "failed"
                if view.started is not None:
                    view.duration = time.monotonic() - view.started
                view.lines.clear()
                view.lines.extend(event.last_lines[-LOG_LINES_SHOWN:])  # why, in its own words
                code = f"exit {event.exit_code}: " if event.exit_code is not None else ""
                view.detail = code + event.reason
                if event.log_path:
                    self.failed_logs[event.step] = event.log_path
            case "step_retried":
                self.step(event.step).detail = f"retry {event.attempt}: {event.reason}"
            case "step_skipped":
                view = self.step(event.step)
                view.state, view.detail = "skipped", event.reason
            case "step_cancelled":
                self.step(event.step).state = "cancelled"
            case "run_finished":
                self.finished = event

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        states = [s.state for s in self.steps.values()]
        settled = sum(s in ("done", "cached", "failed", "skipped", "cancelled") for s in states)
        header = Text(f"kliko-async run {self.run_id}  ", style="bold")
        header.append(f"{settled}/{len(states)} settled  ")
        header.append(f"{states.count('running')}/{self.jobs} jobs running")
        table = Table(box=None, expand=False, show_header=True, pad_edge=False)
        for column in ("step", "state", "time", "image", "detail"):
            table.add_column(column, overflow="ellipsis", no_wrap=True)
        now = time.monotonic()
        for view in self.steps.values():
            table.add_row(
                view.name,
                Text(view.state, style=_STYLES.get(view.state, "")),
                _time_of(view, now),
                view.image,
                view.detail,
            )
            if view.state in ("running", "failed"):
                style = "dim" if view.state == "running" else "red"
                for line in view.lines:
                    table.add_row("", "", "", Text("  " + line, style=style), "")
        yield header
        yield table
        if self.finished is not None:
            yield summary(self.finished, self.failed_logs)


def _time_of(view: StepView, now: float) -> str:
    if view.state == "running" and view.started is not None:
        return f"{now - view.started:.0f}s…"
    if view.duration is not None:
        return f"{view.duration:.1f}s"
    return ""


def summary(finished: RunFinished, failed_logs: dict[str, str]) -> Group:
    table = Table(title="summary", title_justify="left", box=None)
    for column in ("ran", "cached", "failed", "skipped", "wall time", "saved by cache"):
        table.add_column(column)
    table.add_row(
        str(finished.ran),
        str(finished.cached),
        str(finished.failed),
        str(finished.skipped),
        f"{finished.wall_s:.1f}s",
        f"{finished.saved_s:.1f}s",
    )
    logs = [Text(f"log of failed step {s}: {p}", style="red") for s, p in failed_logs.items()]
    return Group(table, *logs)


class LiveDisplay:
    """Feeds events into a RunView shown by ``rich.live.Live`` at a steady refresh rate."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4) -> None:
        self.view = RunView()
        self._live = Live(
            self.view,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._started = False

    def __call__(self, event: Event) -> None:
        if not self._started:
            self._live.start()
            self._started = True
        self.view.update(event)

    def close(self) -> None:
        if self._started:
            self._live.refresh()
            self._live.stop()
