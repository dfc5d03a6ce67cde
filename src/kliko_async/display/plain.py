"""``--plain`` (and any non-terminal): one line per state change and per log line.

Each line is prefixed by the step name, like ``docker compose up``, and flushed promptly.
"""

from __future__ import annotations

from typing import TextIO

from kliko_async.display.terminal import printable
from kliko_async.display.wording import LogChoice, run_message, step_message
from kliko_async.events import Event


def describe(event: Event) -> str | None:
    """One human line for a state change; None for events that are not state changes."""
    message = step_message(event)
    if message is not None:
        return f"{message[0]} | {message[1]}"
    return run_message(event)


class PlainDisplay:
    """Writes prefixed lines; with ``quiet`` only failures and the final summary.

    ``logs`` as ``--logs``: every log line, only a failed step's last lines (after its failure
    line), or none.
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False, logs: LogChoice = "all") -> None:
        self._stream = stream
        self._quiet = quiet
        self._logs = logs
        self.log_lines_per_second: float | None = None if logs == "all" and not quiet else 0
        """Every line when it prints them; none made into events when it prints none."""

    def __call__(self, event: Event) -> None:
        if event.kind == "log_line":
            if not self._quiet and self._logs == "all":
                self._stream.write(f"{event.step} | {printable(event.text)}\n")  # see flush
            return
        if self._quiet and event.kind not in ("step_failed", "run_finished"):
            return
        line = describe(event)
        if line is not None:
            self._stream.write(line + "\n")
            if event.kind == "step_failed" and self._logs == "failed" and not self._quiet:
                self._stream.writelines(
                    f"{event.step} | {printable(text)}\n" for text in event.last_lines
                )
            self._stream.flush()

    def flush(self) -> None:
        """Log lines go out here, once per batch of events (see ``EventConsumer``): a pipe sees
        each line promptly, and a flood of lines costs a write per batch, not per line."""
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
