"""The words for each state change, shared by the plain lines and the live view's scroll."""

from __future__ import annotations

from typing import Literal

from kliko_async.display.terminal import printable
from kliko_async.events import Event, RunFinished
from kliko_async.results import ResourceUse

LogChoice = Literal["all", "failed", "none"]
"""``--logs``: which container log lines a display shows (every line is saved anyway)."""


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters. A longer one keeps its start and its end around
    an ellipsis: the end is what tells the expansions of a matrix step apart
    (``sweep[…79dd6-17]``, where a cut end showed every expansion as ``sweep[tag=179dd…``)."""
    if len(name) <= width:
        return name
    if width < 5:
        return name[: max(0, width - 1)] + "…"
    head = (width - 1) * 2 // 5
    bracket = name.find("[")
    if 0 < bracket < width // 2:  # the matrix step's own name, whole
        head = bracket + 1
    return f"{name[:head]}…{name[len(name) - (width - 1 - head) :]}"


def step_message(event: Event) -> tuple[str, str] | None:
    """(step, what happened to it) for a step's state change; None for other events.

    Reasons may quote a container, an image or the engine: they come out printable.
    """
    message = _step_message(event)
    return None if message is None else (message[0], printable(message[1]))


def _step_message(event: Event) -> tuple[str, str] | None:
    match event.kind:
        case "step_cached":
            waited = (
                f", made by another run while this one waited {seconds(event.waited_s)}"
                if event.waited_s
                else ""
            )
            saved = f"saved {event.original_duration_s:.1f}s"
            return event.step, f"cached ({event.key[:12]}, {saved}{waited})"
        case "data_keying":  # data are not steps, but their lines read as a step's do
            return event.data, f"data: looking at {event.path}"
        case "data_keyed":
            read = (
                f"{event.read_files} read, {_size(event.read_bytes)}"
                if event.read_files
                else "none read"
            )
            return event.data, (
                f"data: {counted(event.files, 'file')}, {_size(event.size_bytes)} ({read}) "
                f"in {event.duration_s:.1f}s"
            )
        case "image_building":
            return event.step, f"building image from {event.context}"
        case "image_built":
            return event.step, f"built image {event.image_id[:19]}"
        case "step_preparing":
            return event.step, f"preparing: copying {', '.join(event.inputs)} into /work"
        case "step_waiting_for_lock":
            return event.step, "waiting for another run, which is computing the same key"
        case "step_started":
            again = f", attempt {event.attempt}" if event.attempt > 1 else ""
            return event.step, f"started ({event.container_id[:12]}{again})"
        case "step_finished":
            waited = f" (after waiting {seconds(event.waited_s)} for another run)"
            used = f" ({describe_usage(event.usage)})" if event.usage is not None else ""
            return event.step, f"done in {event.duration_s:.1f}s{used}" + (
                waited if event.waited_s else ""
            )
        case "step_failed":
            where = f"; full log: {event.log_path}" if event.log_path else ""
            return event.step, f"FAILED: {event.reason}{where}"
        case "step_retried":
            return event.step, (
                f"retrying in {event.delay_s:g}s (attempt {event.attempt}): {event.reason}"
            )
        case "step_skipped":
            return event.step, f"skipped: {event.reason}"
        case "step_cancelled":
            return event.step, "cancelled"
    return None


def describe_usage(usage: ResourceUse) -> str:
    """``CPU 1.2s, peak memory 310.4 MB``: what the engine measured of a step's container.

    Measured once only (a container that ended within about a second of the engine's first
    sample), the figures are lower bounds, and say so: ``CPU ≥0.1s, peak memory ≥4.4 MB``."""
    least = "≥" if usage.samples < 2 else ""
    parts = []
    if usage.cpu_s is not None:
        parts.append(f"CPU {least}{seconds(usage.cpu_s)}")
    if usage.peak_memory_bytes is not None:
        parts.append(f"peak memory {least}{_size(usage.peak_memory_bytes)}")
    return ", ".join(parts)


def counted(number: int, noun: str) -> str:
    """``1 step``, ``2 steps``: a number and its noun, plural but for one."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _size(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def run_message(event: Event) -> str | None:
    """The line for the start or the end of a run; None for other events."""
    message = _run_message(event)
    return None if message is None else printable(message)


def _run_message(event: Event) -> str | None:
    match event.kind:
        case "run_started":
            steps = counted(len(event.steps), "step")
            return f"run {event.run_id}: {steps}, up to {event.jobs} at once"
        case "export_started":
            return f"copying the outputs of {counted(len(event.steps), 'step')} to {event.folder}"
        case "output_exported":  # the run's, after the steps: not one of a step's own lines
            files = counted(event.files, "file")
            what = f"{files}, {_size(event.size_bytes)}, {event.done}/{event.total}"
            if event.unchanged:
                return f"{event.step} is in {event.path} already, unchanged ({what})"
            return f"copied {event.step} to {event.path} ({what})"
        case "run_finished":
            state = run_state(event)
            if not event.outputs_copied:
                state += " (not all of its outputs were copied to --out)"
            line = (
                f"run {event.run_id} {state}: {event.ran} ran, {event.cached} cached, "
                f"{event.failed} failed, {event.skipped} skipped, {event.cancelled} cancelled "
                f"in {event.wall_s:.1f}s (cache saved {event.saved_s:.1f}s)"
            )
            stale = stale_outputs(event)
            return line if stale is None else f"{line}; {stale}"
    return None


def stale_outputs(event: RunFinished, shown: int = 3) -> str | None:
    """What the summary says of ``--out`` folders an earlier run wrote for steps that did not
    finish now (their old outputs are left, and must not pass for this run's); None if none."""
    names = event.stale_outputs
    if not names:
        return None
    listed = ", ".join(names[:shown]) + (
        f" and {len(names) - shown:,} more" if len(names) > shown else ""
    )
    return (
        f"--out still holds an earlier run's output of {listed}, which did not finish in this run"
    )


def run_state(finished: RunFinished) -> str:
    """How a run ended, in a word: ok, FAILED, or interrupted (Ctrl-C, a signal, a host
    application cancelling it: steps were cancelled, which nothing else does)."""
    if finished.ok:
        return "ok"
    if finished.cancelled:
        return "interrupted" if not finished.failed else "FAILED, then interrupted"
    return "FAILED"


def seconds(value: float) -> str:
    """A duration as people read it at a glance: 0.4s, 12s, 3m05s, 1h02m."""
    if value < 10:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
