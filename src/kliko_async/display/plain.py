"""``--plain`` (and any non-terminal): one line per state change and per log line.

Each line is prefixed by the step name, like ``docker compose up``, and flushed promptly.
"""

from __future__ import annotations

import time
from typing import TextIO

from kliko_async.events import Event


def describe(event: Event) -> str | None:
    """One human line for a state change; None for events that are not state changes."""
    match event.kind:
        case "run_started":
            return f"run {event.run_id}: {len(event.steps)} steps, up to {event.jobs} at once"
        case "step_cached":
            return (
                f"{event.step} | cached ({event.key[:12]}, saved {event.original_duration_s:.1f}s)"
            )
        case "image_building":
            return f"{event.step} | building image from {event.context}"
        case "image_built":
            return f"{event.step} | built image {event.image_id[:19]}"
        case "step_started":
            again = f", attempt {event.attempt}" if event.attempt > 1 else ""
            return f"{event.step} | started ({event.container_id[:12]}{again})"
        case "step_finished":
            return f"{event.step} | done in {event.duration_s:.1f}s"
        case "step_failed":
            where = f"; full log: {event.log_path}" if event.log_path else ""
            return f"{event.step} | FAILED: {event.reason}{where}"
        case "step_retried":
            return (
                f"{event.step} | retrying in {event.delay_s:g}s "
                f"(attempt {event.attempt}): {event.reason}"
            )
        case "step_skipped":
            return f"{event.step} | skipped: {event.reason}"
        case "step_cancelled":
            return f"{event.step} | cancelled"
        case "run_finished":
            state = "ok" if event.ok else "FAILED"
            return (
                f"run {event.run_id} {state}: {event.ran} ran, {event.cached} cached, "
                f"{event.failed} failed, {event.skipped} skipped, {event.cancelled} cancelled "
                f"in {event.wall_s:.1f}s (cache saved {event.saved_s:.1f}s)"
            )
    return None


class PlainDisplay:
    """Writes prefixed lines; with ``quiet`` only failures and the final summary."""

    FLUSH_EVERY_S = 0.1
    """Log lines are flushed at least this often, so a pipe sees them promptly."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._flushed = time.monotonic()

    def __call__(self, event: Event) -> None:
        if event.kind == "log_line":
            if not self._quiet:
                self._stream.write(f"{event.step} | {event.text}\n")
                now = time.monotonic()
                if now - self._flushed >= self.FLUSH_EVERY_S:
                    self._stream.flush()
                    self._flushed = now
            return
        if self._quiet and event.kind not in ("step_failed", "run_finished"):
            return
        line = describe(event)
        if line is not None:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
