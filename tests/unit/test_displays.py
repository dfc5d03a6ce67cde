"""Each display fed a known event sequence, rendered to text."""

from __future__ import annotations

import io
import json

from rich.console import Console

from kliko_async.display.jsonl import JsonLinesDisplay
from kliko_async.display.live import LiveDisplay
from kliko_async.display.plain import PlainDisplay
from kliko_async.events import (
    EVENT_ADAPTER,
    Event,
    ExportStarted,
    LogLine,
    OutputExported,
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


def test_plain_logs_choice_shows_all_lines_a_failed_steps_last_lines_or_none() -> None:
    for logs, expected in (
        ("all", ["upper | upper: ./numbers.txt", "upper | warning: almost done"]),
        ("failed", ["fail | something went wrong"]),
        ("none", []),
    ):
        out = io.StringIO()
        display = PlainDisplay(out, logs=logs)  # type: ignore[arg-type]
        for event in sample_run():
            display(event)
        lines = out.getvalue().splitlines()
        shown = [
            line
            for line in lines
            if "|" in line
            and line.split(" | ")[1]
            in ("upper: ./numbers.txt", "warning: almost done", "something went wrong")
        ]
        assert shown == expected, logs
        assert any(line.startswith("fail | FAILED") for line in lines)


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


def exports(count: int) -> list[Event]:
    """The copy of ``count`` steps' outputs to ``out``, as a run ends."""
    names = [f"s{i:02}" for i in range(1, count + 1)]
    copied: list[Event] = [ExportStarted(folder="out", steps=names)]
    for done, name in enumerate(names, start=1):
        copied.append(
            OutputExported(
                step=name,
                path=f"out/{name}",
                files=1,
                size_bytes=35,
                duration_s=0.01,
                done=done,
                total=count,
            )
        )
    return copied


def test_the_live_view_shows_the_copy_of_the_outputs_to_out() -> None:
    """On a terminal, 'run chain.yaml --out o4' said nothing of the copy that --plain shows a
    line for each step of (usage.md: "with a line per step as it is copied"); a big sweep's
    copy scrolls ten of them, and one line counts the rest."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system=None)
    display = LiveDisplay(console=console, refresh_per_second=20)
    run = sample_run()
    for event in [*run[:-1], *exports(12), run[-1]]:
        display(event)
    display.close()
    text = buffer.getvalue()

    assert "copying the outputs of 12 steps to out" in text
    for name in [f"s{i:02}" for i in range(1, 11)]:
        assert f"copied {name} to out/{name} (1 file, 35 bytes," in text
    assert "copied s11" not in text and "copied s12" not in text
    assert "… and 2 more steps copied to out" in text
    assert text.index("… and 2 more") < text.index("summary"), "the copy, then the summary"


def test_a_fast_log_line_is_the_same_event_as_a_validated_one() -> None:
    fast = log_line("upper", "stderr", "warning: ünïcode")
    slow = LogLine(time=fast.time, step="upper", stream="stderr", text="warning: ünïcode")
    assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
    assert EVENT_ADAPTER.validate_json(fast.model_dump_json()) == fast
    assert fast.model_copy(update={"text": "x"}).text == "x"
    assert fast.model_fields_set == slow.model_fields_set | {"kind"}  # kept by exclude_unset


HOSTILE = (
    "before\x1b[2J\x1b[H\x1b]0;PWNED\x07\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\r\tafter\x9b5A"
)


def test_plain_and_live_displays_never_pass_terminal_escapes_on() -> None:
    stream = io.StringIO()
    plain = PlainDisplay(stream)
    plain(log_line("gen", "stdout", HOSTILE))
    plain.close()
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=True, color_system="standard")
    live = LiveDisplay(console=console, refresh_per_second=20)
    for event in sample_run()[:3]:
        live(event)
    live(log_line("gen", "stdout", HOSTILE))
    live(StepFailed(step="gen", key="k", reason="exited with code 1", last_lines=[HOSTILE]))
    live.close()

    assert stream.getvalue() == "gen | beforelink\tafter\n"
    shown = buffer.getvalue()
    assert "beforelink" in shown
    for sequence in ("\x1b[2J", "\x1b]0;PWNED", "\x1b]8;;", "\x07", "\x9b"):
        assert sequence not in shown, repr(sequence)


def test_one_step_and_one_file_are_said_in_the_singular() -> None:
    """A one-step run said 'run r1: 1 steps, up to 2 at once' and 'copied s01 to out/s01 (1
    files, ...)'."""
    stream = io.StringIO()
    plain = PlainDisplay(stream)
    plain(RunStarted(run_id="r1", steps=["s01"], images={"s01": "example/gen"}, jobs=2))
    for event in exports(1):
        plain(event)
    plain.close()

    assert stream.getvalue().splitlines() == [
        "run r1: 1 step, up to 2 at once",
        "copying the outputs of 1 step to out",
        "copied s01 to out/s01 (1 file, 35 bytes, 1/1)",
    ]
