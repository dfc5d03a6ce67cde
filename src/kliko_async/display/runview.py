"""What the live view's pinned status panel shows: a small state model of the run, and its drawing.

Events update :class:`RunView` on the event loop; rich draws it from its own thread. Both sides
hold ``RunView.lock``, and drawing copies what it needs before it lets go, so an update never
changes a container that is being read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from kliko_async.display.terminal import printable
from kliko_async.display.wording import (
    describe_usage,
    run_state,
    seconds,
    short_name,
    stale_outputs,
)
from kliko_async.events import Event, RunFinished
from kliko_async.results import ResourceUse

SETTLED = ("done", "cached", "failed", "skipped", "cancelled")
ACTIVE = ("building", "preparing", "waiting for another run", "running")
FAILED_LINES_SHOWN = 10
FAILURES_SHOWN = 10
"""The summary says this many failures in full (a matrix step's that failed alike being one);
the rest are counted in a line: 300 steps that failed each its own way made 3,600 lines."""
"""A failed step's last lines in the final summary (its whole log is in the file named)."""
STEP_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")
"""Colours of step names, by the step's place in the chain; red is kept for failures."""
_STATE_STYLES = {
    "running": "bold yellow",
    "building": "yellow",
    "preparing": "yellow",
    "waiting for another run": "magenta",
    "failed": "bold red",
}
_NAME_WIDTH = 24
"""Step names longer than this are shortened in the panel (the plain lines show them whole)."""


@dataclass
class StepView:
    name: str
    colour: str
    image: str = ""
    state: str = "waiting"
    since: float | None = None
    """When the step entered its current active state (monotonic)."""
    duration: float | None = None
    expected: float | None = None
    reason: str = ""
    last_lines: list[str] = field(default_factory=list)
    log_path: str | None = None
    usage: ResourceUse | None = None
    matrix_step: str | None = None
    """The matrix step it is an expansion of (None: a step of its own)."""


class RunView:
    """The run's state as the panel shows it, updated from events, drawn by rich."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run_id = ""
        self.jobs = 0
        self.started = time.monotonic()
        self.steps: dict[str, StepView] = {}
        self.finished: RunFinished | None = None

    def colour(self, name: str) -> str:
        with self.lock:
            view = self.steps.get(name)
            return view.colour if view is not None else STEP_COLOURS[0]

    def state_of(self, name: str) -> str | None:
        with self.lock:
            view = self.steps.get(name)
            return view.state if view is not None else None

    def update(self, event: Event) -> None:
        with self.lock:
            self._update(event)

    def _step(self, name: str) -> StepView:
        view = self.steps.get(name)
        if view is None:
            colour = STEP_COLOURS[len(self.steps) % len(STEP_COLOURS)]
            view = self.steps[name] = StepView(name, colour)
        return view

    def _enter(self, name: str, state: str) -> StepView:
        view = self._step(name)
        if state != view.state:
            view.state, view.since = state, time.monotonic()
        return view

    def _update(self, event: Event) -> None:
        now = time.monotonic()
        match event.kind:
            case "run_started":
                self.run_id, self.jobs, self.started = event.run_id, event.jobs, now
                for name in event.steps:
                    view = self._step(name)
                    view.image = event.images.get(name, "")
                    view.expected = event.expected_s.get(name)
                    view.matrix_step = event.matrix.get(name)
            case "image_building":
                self._enter(event.step, "building")
            case "image_built":
                self._enter(event.step, "waiting")
            case "step_preparing":
                self._enter(event.step, "preparing")
            case "step_waiting_for_lock":
                self._enter(event.step, "waiting for another run")
            case "step_started":
                self._enter(event.step, "running")
            case "step_cached":
                view = self._enter(event.step, "cached")
                view.duration = event.original_duration_s
            case "step_finished":
                view = self._enter(event.step, "done")
                view.duration, view.log_path = event.duration_s, event.log_path
                view.usage = event.usage
            case "step_failed":
                view = self._step(event.step)
                if view.since is not None and view.state in ACTIVE:
                    view.duration = now - view.since
                view = self._enter(event.step, "failed")
                code = f"exit {event.exit_code}: " if event.exit_code is not None else ""
                view.reason = printable(code + event.reason)
                view.last_lines = event.last_lines[-FAILED_LINES_SHOWN:]
                view.log_path = event.log_path
            case "step_retried":
                self._enter(event.step, "waiting to retry")
            case "step_skipped":
                self._enter(event.step, "skipped").reason = printable(event.reason)
            case "step_cancelled":
                self._enter(event.step, "cancelled")
            case "run_finished":
                self.finished = event

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or console.height
        with self.lock:
            if self.finished is not None:
                lines = summary_lines(self.finished, list(self.steps.values()))
            else:
                lines = self._panel(options.max_width, height, time.monotonic())
        yield Group(*lines)

    def _panel(self, width: int, height: int, now: float) -> list[RenderableType]:
        """At most a third of the terminal (and never under 4 lines): collapse, never overflow."""
        budget = max(4, height // 3)
        steps = list(self.steps.values())
        counts: dict[str, int] = {}
        for view in steps:
            counts[view.state] = counts.get(view.state, 0) + 1
        settled = sum(counts.get(s, 0) for s in SETTLED)
        lines: list[RenderableType] = [self._progress(width, settled, len(steps), now)]
        active = [v for v in steps if v.state in ACTIVE]
        failed = [v for v in steps if v.state == "failed"]
        rows = budget - 2 - (1 if failed else 0)
        lines.extend(_cells(active, width, max(1, rows), now))
        if failed:
            text = Text("failed: ", style="bold red", no_wrap=True, overflow="ellipsis")
            text.append(", ".join(_failed_names(failed)), style="red")
            lines.append(text)
        order = ("running", *ACTIVE[:3], "waiting to retry", "waiting", *SETTLED)
        parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
        lines.append(Text("  ".join(parts), style="dim", no_wrap=True, overflow="ellipsis"))
        return lines

    def _progress(self, width: int, settled: int, total: int, now: float) -> Text:
        label = f" {settled}/{total} settled  {seconds(now - self.started)}"
        eta = self._eta(now)
        if eta is not None:
            label += f"  ETA {seconds(eta)}"
        head = f"run {self.run_id} " if width >= 70 else ""
        bar_width = max(0, min(40, width - len(head) - len(label) - 1))
        filled = bar_width * settled // total if total else bar_width
        text = Text(head, style="bold", no_wrap=True, overflow="ellipsis")
        text.append("█" * filled, style="green")
        text.append("░" * (bar_width - filled), style="dim")
        text.append(label)
        return text

    def _eta(self, now: float) -> float | None:
        """Remaining work from past durations, spread over the job slots; None if unknown."""
        left: list[float] = []
        for view in self.steps.values():
            if view.state in SETTLED:
                continue
            if view.expected is None:
                return None
            ran = now - view.since if view.state == "running" and view.since else 0.0
            left.append(max(0.0, view.expected - ran))
        if not left:
            return None
        return max(max(left), sum(left) / max(1, self.jobs))


def _cells(active: list[StepView], width: int, rows: int, now: float) -> list[Text]:
    """The active steps with their time, as many to a line as fit, in at most ``rows`` lines."""
    if not active:
        return []
    cells: list[Text] = []
    for view in active:
        cell = Text(_short(view.name), style=view.colour)
        if view.state != "running":
            cell.append(f" {view.state}", style=_STATE_STYLES.get(view.state, ""))
        cell.append(f" {seconds(now - (view.since or now))}")
        cells.append(cell)
    cell_width = min(width, max(c.cell_len for c in cells) + 2)
    per_line = max(1, width // cell_width)
    if len(cells) > per_line * rows:  # the last cell says how many more there are
        shown = per_line * rows - 1
        more = Text(f"+{len(cells) - shown} more", style="dim")
        cells = [*cells[:shown], more]
    lines = []
    for start in range(0, len(cells), per_line):
        line = Text(no_wrap=True, overflow="ellipsis")
        for cell in cells[start : start + per_line]:
            cell.truncate(cell_width - 2)
            line.append_text(cell)
            line.append(" " * (cell_width - cell.cell_len))
        line.rstrip()
        lines.append(line)
    return lines


def _failed_names(failed: list[StepView]) -> list[str]:
    """The failed steps for the panel's line: a matrix step's failed expansions as one
    (``bad ×276``), so the line says what failed in a sweep before its ellipsis."""
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for view in failed:
        family = view.matrix_step or view.name
        counts[family] = counts.get(family, 0) + 1
        names.setdefault(family, view.name)
    return [names[f] if n == 1 else f"{f} ×{n:,}" for f, n in counts.items()]


def _short(name: str) -> str:
    return short_name(name, _NAME_WIDTH)


def summary_lines(finished: RunFinished, steps: list[StepView]) -> list[RenderableType]:
    """The end of the run: what ran, what the cache saved, and each failed step's last words."""
    word = run_state(finished)
    colour = {"ok": "bold green", "interrupted": "bold yellow"}.get(word, "bold red")
    state = Text(word, style=colour)
    if not finished.outputs_copied:
        state.append(" (not all of its outputs were copied to --out)")
    head = Text.assemble(("summary: ", "bold"), f"run {finished.run_id} ", state)
    counts = f"{finished.ran} ran, {finished.cached} cached, {finished.failed} failed"
    for number, what in ((finished.skipped, "skipped"), (finished.cancelled, "cancelled")):
        counts += f", {number} {what}" if number else ""
    counts += f" in {finished.wall_s:.1f}s; cache saved {finished.saved_s:.1f}s"
    lines: list[RenderableType] = []
    heaviest = heaviest_steps(steps)
    if heaviest:  # above the summary's own line, which stays last when nothing failed
        lines.append(
            Text.assemble(
                ("heaviest steps: ", "bold"),
                "; ".join(f"{v.name} ({describe_usage(v.usage)})" for v in heaviest if v.usage),
            )
        )
    lines.append(Text.assemble(head, ": ", counts))
    stale = stale_outputs(finished)
    if stale is not None:
        lines.append(Text(printable(stale), style="yellow"))
    groups = failures(steps)
    for views in groups[:FAILURES_SHOWN]:
        first = views[0]
        name = first.name if len(views) == 1 else expansions_name(views)
        lines.append(
            Text.assemble((name, f"bold {first.colour}"), (" failed: ", "bold red"), first.reason)
        )
        if first.last_lines:
            last = _folding_grid()
            for line in first.last_lines:
                last.add_row(Text("  |", style="red"), Text(printable(line)))
            lines.append(last)
        logs = [v.log_path for v in views if v.log_path]
        if logs:
            where = _folding_grid()
            more = f" and {len(logs) - 1:,} more beside it" if len(logs) > 1 else ""
            label = "  full logs:" if more else "  full log:"
            where.add_row(Text(label, style="red"), Text(logs[0] + more, style="red"))
            lines.append(where)
    rest = [view.name for views in groups[FAILURES_SHOWN:] for view in views]
    if rest:
        named = ", ".join(rest[:3]) + (" …" if len(rest) > 3 else "")
        lines.append(
            Text(
                f"… and {len(rest):,} more failed steps ({named}): each, its reason and its log "
                f"in 'kliko-async report {finished.run_id}'",
                style="red",
            )
        )
    return lines


def failures(steps: list[StepView]) -> list[list[StepView]]:
    """The failed steps, those of one matrix step that failed alike (the same reason and last
    lines) together: a 1,000-way sweep that failed for one reason is said once, not 1,000 times."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[StepView]] = {}
    for view in steps:
        if view.state == "failed":
            family = view.matrix_step or view.name
            groups.setdefault((family, view.reason, tuple(view.last_lines)), []).append(view)
    return list(groups.values())


def expansions_name(views: list[StepView]) -> str:
    """Expansions of one matrix step that failed alike: ``sweep (300 expansions: sweep[x=0] …
    sweep[x=299])``."""
    family = views[0].matrix_step or views[0].name
    return f"{family} ({len(views):,} expansions: {views[0].name} … {views[-1].name})"


def heaviest_steps(steps: list[StepView], most: int = 3) -> list[StepView]:
    """The steps that used the most CPU time, then memory (only those the engine measured)."""
    measured = [v for v in steps if v.usage is not None and v.usage.cpu_s is not None]
    measured.sort(
        key=lambda v: (v.usage.cpu_s or 0.0, v.usage.peak_memory_bytes or 0) if v.usage else (0, 0),
        reverse=True,
    )
    return measured[:most]


def _folding_grid() -> Table:
    """Two columns: a label, and text that folds within its own column, under itself."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    return grid
