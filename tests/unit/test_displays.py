"""Each display fed a known event sequence, rendered to text."""

from __future__ import annotations

import io
import json

from rich.console import Console

from kliko_async.display.jsonl import JsonLinesDisplay
from kliko_async.display.live import LiveDisplay, RunView
from kliko_async.display.plain import PlainDisplay
from kliko_async.events import (
    EVENT_ADAPTER,
    Event,
    RunFinished,
    RunStarted,
    StepCached,
    StepFailed,
    StepFinished,
    StepQueued,
    StepSkipped,
    StepStarted,
    log_line,
)


def sample_run() -> list[Event]:
    return [
        RunStarted(
            run_id="r1",
            steps=["gen", "upper", "fail", "after"],
            images={"gen": "example/gen", "upper": "example/upper", "fail": "example/fail"},
            jobs=2,
        ),
        StepQueued(step="upper", key="k2"),
        StepCached(step="gen", key="k1" * 8, original_duration_s=12.5),
        StepStarted(step="upper", key="k2", container_id="c0ffee" * 8),
        log_line("upper", "stdout", "upper: ./numbers.txt"),
        log_line("upper", "stderr", "warning: almost done"),
        StepFinished(step="upper", key="k2", exit_code=0, duration_s=1.25),
        StepStarted(step="fail", key="k3", container_id="deadbeef" * 8),
        StepFailed(
            step="fail",
            key="k3",
            reason="exited with code 3",
            exit_code=3,
            last_lines=["something went wrong"],
            log_path="/cache/logs/r1/fail.log",
        ),
        StepSkipped(step="after", reason="input 'fail' did not finish"),
        RunFinished(
            run_id="r1",
            ran=1,
            cached=1,
            failed=1,
            skipped=1,
            cancelled=0,
            wall_s=2.0,
            saved_s=12.5,
            ok=False,
        ),
    ]


def test_plain_display_prefixes_every_log_line_and_state_change_with_the_step() -> None:
    out = io.StringIO()
    display = PlainDisplay(out)
    for event in sample_run():
        display(event)
    display.close()
    lines = out.getvalue().splitlines()
    assert "upper | upper: ./numbers.txt" in lines
    assert "upper | warning: almost done" in lines
    assert any(line.startswith("gen | cached") and "saved 12.5s" in line for line in lines)
    assert "upper | done in 1.2s" in lines or "upper | done in 1.3s" in lines
    failed = next(line for line in lines if line.startswith("fail | FAILED"))
    assert "exited with code 3" in failed and "/cache/logs/r1/fail.log" in failed
    assert "after | skipped: input 'fail' did not finish" in lines
    assert lines[-1].startswith("run r1 FAILED: 1 ran, 1 cached, 1 failed, 1 skipped")


def test_quiet_display_shows_only_failures_and_the_summary() -> None:
    out = io.StringIO()
    display = PlainDisplay(out, quiet=True)
    for event in sample_run():
        display(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fail | FAILED")
    assert lines[1].startswith("run r1 FAILED")


def test_json_display_writes_one_parseable_event_per_line() -> None:
    out = io.StringIO()
    display = JsonLinesDisplay(out)
    events = sample_run()
    for event in events:
        display(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(events)
    parsed = [EVENT_ADAPTER.validate_json(line) for line in lines]
    assert [p.kind for p in parsed] == [e.kind for e in events]
    assert json.loads(lines[4]) | {"time": None} == {
        "kind": "log_line",
        "step": "upper",
        "stream": "stdout",
        "text": "upper: ./numbers.txt",
        "time": None,
    }


def render(view: RunView, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(view)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_live_view_shows_a_row_per_step_with_state_and_running_log_lines() -> None:
    view = RunView()
    for event in sample_run()[:6]:  # up to upper's log lines: upper is running
        view.update(event)
    text = render(view)
    assert "kliko-async run r1" in text
    assert "1/4 settled" in text and "1/2 jobs running" in text
    gen_row = next(line for line in text.splitlines() if line.strip().startswith("gen"))
    assert "cached" in gen_row and "12.5s" in gen_row and "example/gen" in gen_row
    upper_row = next(line for line in text.splitlines() if line.strip().startswith("upper"))
    assert "running" in upper_row
    assert "upper: ./numbers.txt" in text and "warning: almost done" in text


def test_live_view_ends_with_a_summary_and_the_failed_steps_log() -> None:
    view = RunView()
    for event in sample_run():
        view.update(event)
    text = render(view)
    fail_row = next(line for line in text.splitlines() if line.strip().startswith("fail"))
    assert "failed" in fail_row and "exit 3" in fail_row
    assert "summary" in text
    assert "12.5s" in text  # time saved by the cache
    assert "log of failed step fail: /cache/logs/r1/fail.log" in text
    assert "upper: ./numbers.txt" not in text  # finished steps no longer show log lines
    assert "something went wrong" in text  # a failed step shows its last lines: why it failed


def test_live_view_keeps_only_the_last_few_lines_of_a_flood() -> None:
    view = RunView()
    view.update(sample_run()[0])
    view.update(StepStarted(step="upper", key="k", container_id="c" * 64))
    for i in range(100_000):
        view.update(log_line("upper", "stdout", f"line {i}"))
    text = render(view)
    assert "line 99999" in text
    assert "line 99990" not in text


def test_live_display_renders_to_a_terminal_console() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system="standard")
    display = LiveDisplay(console=console, refresh_per_second=20)
    for event in sample_run():
        display(event)
    display.close()
    text = buffer.getvalue()
    assert "summary" in text
    assert "\x1b[" in text  # drawn with terminal control codes
