"""The rich live view on a terminal: every log line and state change scrolls above a small
status panel pinned at the bottom, each prefixed by its step's name in the step's colour, as
``docker compose up`` does.

The event loop only appends what is to scroll to a queue and updates the panel's state
(:class:`~kliko_async.display.runview.RunView`, under its lock); a drawing thread prints what
queued and redraws the panel a few times a second, so a container writing 100,000 lines a
second costs a few prints per second, not one per line. Past ``LINES_PER_SECOND`` lines of one
step in a second, the screen shows a sample and says how many lines it left out and where the
full log is; the saved log always holds every line.
"""

from __future__ import annotations

import threading
from collections import deque

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kliko_async.display.runview import RunView
from kliko_async.display.terminal import printable
from kliko_async.display.wording import LogChoice, run_message, short_name, step_message
from kliko_async.events import (
    Event,
    ExportStarted,
    LogLine,
    OutputExported,
    StepCancelled,
    StepSkipped,
)

LINES_PER_SECOND = 50
"""At most this many lines of one step scroll per second; the rest are counted, not shown."""
SAMPLE_PER_SECOND = 3
"""A step that went over the limit in the last second shows only this many: a sample."""
UNSTARTED_SHOWN = 10
"""Steps that end without having begun (skipped, or cancelled while they waited) scroll this
many of each kind; the rest are counted in one line at the end. Ctrl-C in a 10,000-way matrix
scrolled 9,887 "cancelled" lines (3.5 s of drawing) over what the run did."""
EXPORTS_SHOWN = 10
"""Of the steps whose outputs are copied to ``--out`` after the run, this many scroll a line
each (``copied gen to out/gen (...)``); one line counts the rest."""
_PREFIX_WIDTH = 16
_WIDEST_PREFIX = 32
_UNSTARTED_ENDS = {
    "step_skipped": "skipped",
    "step_cancelled": "cancelled before they started",
}
_STATE_STYLES = {"step_failed": "bold red", "step_cached": "cyan", "step_finished": "green"}


class LiveDisplay:
    """An event consumer (``__call__(event)``, ``close()``) drawing the live view with rich."""

    log_lines_per_second: float = LINES_PER_SECOND
    """It never shows more lines of a step per second: the run need not make more into events
    (with ``logs`` other than "all", it shows none)."""

    def __init__(
        self,
        console: Console | None = None,
        refresh_per_second: float = 4,
        *,
        logs: LogChoice = "all",
    ) -> None:
        self.view = RunView()
        self.console = console or Console()
        self._logs = logs
        self._all_logs = logs == "all"
        if not self._all_logs:
            self.log_lines_per_second = 0
        self._period = 1 / refresh_per_second
        self._live = Live(
            self.view,
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,  # messages printed meanwhile (Ctrl-C) go above the panel
        )
        # What is to scroll: appended on the event loop, taken by the drawing thread.
        # A run's own line (the export's) is a Text alone, drawn without a step's name.
        self._queue: deque[LogLine | tuple[str, Text] | Text] = deque()
        self._prefix_width = 4
        # How wide the step names before the lines may be: a fifth of a wide terminal. Read
        # once: the console's width asks the terminal each time, and this is per line drawn.
        self._widest = max(_PREFIX_WIDTH, min(_WIDEST_PREFIX, self.console.width // 5))
        self._second = 0  # advanced by the drawing thread: the flood limit's time window
        self._window = 0
        self._shown: dict[str, int] = {}  # lines of each step shown in this window (loop only)
        self._flooding: set[str] = set()  # steps over the limit in the last window (loop only)
        self._hidden: dict[str, int] = {}  # lines of each step not shown, in all
        self._noted: dict[str, int] = {}  # of those, already reported (under _hidden_lock)
        self._hidden_lock = threading.Lock()
        self._stop = threading.Event()
        self._drawer: threading.Thread | None = None
        self._unstarted: dict[str, int] = {}  # kind -> steps that ended before they began
        self._export_folder = ""

    def __call__(self, event: Event) -> None:
        if event.kind == "log_line":
            if self._all_logs:
                self._log_line(event)
            return
        if event.kind == "log_lines_skipped":  # dropped before reaching this view: not shown
            if self._all_logs:
                with self._hidden_lock:
                    self._hidden[event.step] = self._hidden.get(event.step, 0) + event.count
            return
        if self._drawer is None:
            self._start()
        if (
            isinstance(event, StepSkipped | StepCancelled)
            and self.view.state_of(event.step) == "waiting"
        ):
            count = self._unstarted[event.kind] = self._unstarted.get(event.kind, 0) + 1
            if count > UNSTARTED_SHOWN:  # counted, said once at the end
                self.view.update(event)
                return
        self.view.update(event)
        if event.kind == "run_started":
            longest = max((len(s) for s in event.steps), default=4)
            self._prefix_width = min(self._widest, longest)
            return
        message = step_message(event)
        if message is None:
            if isinstance(event, ExportStarted | OutputExported):
                self._export_line(event)
            return
        step, text = message
        self._queue.append((step, Text(text, style=_STATE_STYLES.get(event.kind, ""))))
        if event.kind == "step_failed" and self._logs == "failed":
            for last in event.last_lines:
                self._queue.append((step, Text(printable(last))))
        if event.kind in ("step_failed", "step_finished", "step_cancelled"):
            self._note_hidden(step, getattr(event, "log_path", None), final=True)

    def _export_line(self, event: ExportStarted | OutputExported) -> None:
        """The copy of the outputs to ``--out``, after the steps: a line as it starts, and one
        per step copied, the first ``EXPORTS_SHOWN`` of them; the rest counted at its end."""
        if isinstance(event, ExportStarted):
            self._export_folder = event.folder
        elif event.done > EXPORTS_SHOWN:
            if event.done == event.total:
                rest = event.total - EXPORTS_SHOWN
                text = f"… and {rest:,} more steps copied to {self._export_folder}"
                self._queue.append(Text(printable(text), style="dim italic"))
            return
        line = run_message(event)
        if line is not None:
            self._queue.append(Text(line))

    def _log_line(self, event: LogLine) -> None:
        """The hot path of a flood: a few dictionary operations per line, no drawing."""
        if self._window != self._second:
            self._flooding = {s for s, n in self._shown.items() if n >= self._limit(s)}
            self._window = self._second
            self._shown.clear()
        step = event.step
        shown = self._shown.get(step, 0)
        if shown < (SAMPLE_PER_SECOND if step in self._flooding else LINES_PER_SECOND):
            self._shown[step] = shown + 1
            self._queue.append(event)
        elif step in self._hidden:
            self._hidden[step] += 1
        else:
            with self._hidden_lock:  # the drawing thread iterates the keys under this lock
                self._hidden[step] = 1

    def _limit(self, step: str) -> int:
        return SAMPLE_PER_SECOND if step in self._flooding else LINES_PER_SECOND

    def _note_hidden(self, step: str, log_path: str | None, *, final: bool) -> None:
        with self._hidden_lock:
            hidden = self._hidden.get(step, 0)
            new = hidden - self._noted.get(step, 0)
            self._noted[step] = hidden
        if not hidden or (not final and not new):
            return
        if final:
            where = f"; full log: {log_path}" if log_path else "; all saved in its log"
            text = f"… {hidden:,} lines of this step were not shown{where}"
        else:
            text = f"… {new:,} more lines not shown (every line is saved in the step's log)"
        self._queue.append((step, Text(text, style="dim italic")))

    def _prefix(self, step: str) -> Text:
        if len(step) > self._prefix_width < self._widest:  # named before the run started
            self._prefix_width = min(self._widest, len(step))
        name = short_name(step, self._prefix_width)
        return Text(f"{name:<{self._prefix_width}} |", style=self.view.colour(step))

    def _start(self) -> None:
        self._live.start(refresh=False)
        self._drawer = threading.Thread(target=self._draw_loop, name="kliko-live", daemon=True)
        self._drawer.start()

    def _draw_loop(self) -> None:
        try:
            self._tick_until_closed()
        except OSError:  # the terminal went away (closed, a broken pipe): stop drawing, only
            self._stop.set()

    def _tick_until_closed(self) -> None:
        ticks_per_second = max(1, round(1 / self._period))
        tick = 0
        while not self._stop.wait(self._period):
            tick += 1
            if tick % ticks_per_second == 0:
                self._second += 1
                with self._hidden_lock:
                    flooding = [s for s, n in self._hidden.items() if n > self._noted.get(s, 0)]
                for step in flooding:
                    self._note_hidden(step, None, final=False)
            self._draw()

    def _draw(self) -> None:
        """Print what queued above the panel (one print, which also redraws the panel)."""
        queue = self._queue
        if not queue:
            self._live.refresh()
            return
        # Two columns: a long line folds within its own column, under its text, and never
        # pushes the step's name away. A run's own line takes the whole width.
        drawn: list[RenderableType] = []
        grid: Table | None = None
        while queue:
            item = queue.popleft()
            if isinstance(item, Text):
                drawn.append(item)
                grid = None
                continue
            if grid is None:
                grid = Table.grid(padding=(0, 1))
                grid.add_column(no_wrap=True)
                grid.add_column(overflow="fold")
                drawn.append(grid)
            if isinstance(item, tuple):
                grid.add_row(self._prefix(item[0]), item[1])
            else:
                grid.add_row(self._prefix(item.step), Text(printable(item.text)))
        self.console.print(Group(*drawn))

    def close(self) -> None:
        if self._drawer is None:
            return
        self._stop.set()
        self._drawer.join()
        for kind, count in self._unstarted.items():
            if count > UNSTARTED_SHOWN:
                what, run = _UNSTARTED_ENDS[kind], self.view.run_id
                text = (
                    f"… and {count - UNSTARTED_SHOWN:,} more steps {what} "
                    f"(each, and why: kliko-async report {run})"
                )
                self._queue.append(("", Text(text, style="dim italic")))
        try:
            self._draw()  # what queued since the last tick, then the summary
        finally:
            self._live.stop()  # the cursor shown again, stderr given back
