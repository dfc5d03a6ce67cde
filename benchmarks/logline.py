"""The CPU cost of one flood line to kliko-async beyond reading and saving it, without Docker.

``python -m benchmarks.logline events``: make 200,000 ``LogLine`` events (what the scheduler
does per line when anything consumes events). ``display``: make them and feed each to a
``LiveDisplay`` drawing to a terminal ``Console`` on a ``StringIO``, its drawing thread running.
Prints the best of 5 in microseconds per line of CPU time (``time.process_time``: all threads).
"""

from __future__ import annotations

import io
import sys
import time

from rich.console import Console

from kliko_async.display.live import LiveDisplay
from kliko_async.events import RunStarted, StepStarted, log_line

LINES = 200_000


def once(display: bool) -> float:
    live = LiveDisplay(console=Console(file=io.StringIO(), force_terminal=True, width=120))
    live(RunStarted(run_id="r", steps=["flood"], jobs=1))
    live(StepStarted(step="flood", key="k", container_id="c"))
    began = time.process_time()
    for number in range(LINES):
        event = log_line("flood", "stdout", f"line {number}")
        if display:
            live(event)
    spent = time.process_time() - began
    live.close()
    return spent


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "display"
    if kind not in ("events", "display"):
        raise SystemExit("usage: python -m benchmarks.logline events|display")
    best = min(once(kind == "display") for _ in range(5))
    print(f"{kind}: {best / LINES * 1e6:.2f} us per line")


if __name__ == "__main__":
    main()
