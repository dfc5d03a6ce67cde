"""The live view fed known events: what scrolls, what the pinned panel shows, and that drawing
from rich's thread while events arrive is safe."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest
from rich.console import Console

from kliko_async.display.live import LINES_PER_SECOND, LiveDisplay
from kliko_async.display.runview import RunView
from kliko_async.display.wording import short_name
from kliko_async.events import (
    Event,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepPreparing,
    StepSkipped,
    StepStarted,
    StepWaitingForLock,
    log_line,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def started(*steps: str, jobs: int = 4, **expected: float) -> RunStarted:
    return RunStarted(run_id="r1", steps=list(steps), jobs=jobs, expected_s=expected)


def finished(ok: bool = True, **counts: int) -> RunFinished:
    values = {"ran": 0, "cached": 0, "failed": 0, "skipped": 0, "cancelled": 0} | counts
    return RunFinished(run_id="r1", wall_s=2.0, saved_s=12.5, ok=ok, **values)


def sample_run() -> list[Event]:
    return [
        started("gen", "upper", "fail"),
        StepCached(step="gen", key="3b4d7fdf" * 8, original_duration_s=12.5),
        StepStarted(step="upper", key="k2", container_id="c0ffee" * 8),
        log_line("upper", "stdout", "upper: ./numbers.txt"),
        log_line("upper", "stderr", "warning: almost done"),
        StepFinished(step="upper", key="k2", exit_code=0, duration_s=0.05),
        StepStarted(step="fail", key="k3", container_id="deadbeef" * 8),
        log_line("fail", "stdout", "fail: about to fail"),
        StepFailed(
            step="fail",
            key="k3",
            reason="exited with code 3",
            exit_code=3,
            last_lines=["fail: about to fail", "something went wrong"],
            log_path="/cache/logs/r1/fail.log",
        ),
        finished(ok=False, ran=1, cached=1, failed=1),
    ]


def terminal(width: int = 100, height: int = 40) -> Console:
    return Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, color_system="256"
    )


def shown(console: Console) -> list[str]:
    """The lines the terminal received, without control codes; a redraw starts a new line."""
    assert isinstance(console.file, io.StringIO)
    text = ANSI.sub("", console.file.getvalue().replace("\r", "\n"))
    return [line.rstrip() for line in text.splitlines()]


def play(events: list[Event], width: int = 100, height: int = 40, **options: str) -> list[str]:
    console = terminal(width, height)
    display = LiveDisplay(console=console, refresh_per_second=20, **options)  # type: ignore[arg-type]
    for event in events:
        display(event)
    display.close()
    return shown(console)


def panel(view: RunView, width: int = 120, height: int = 40) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None)
    console.print(view)
    return shown(console)


# -- the race between the event loop and rich's drawing thread ---------------------------------


def test_the_view_can_be_drawn_from_another_thread_while_events_arrive() -> None:
    view = RunView()
    view.update(started("s0"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def draw() -> None:
        console = Console(file=io.StringIO(), width=120, height=40)
        while not stop.is_set():
            try:
                console.print(view)
            except Exception as error:  # "dictionary changed size during iteration" before
                errors.append(error)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads very often: the race shows at once
    drawer = threading.Thread(target=draw)
    drawer.start()
    try:
        for i in range(3000):
            view.update(StepStarted(step=f"s{i}", key="k", container_id="c"))
            for j in range(10):
                view.update(log_line(f"s{i}", "stdout", f"line {j}"))
            view.update(StepFinished(step=f"s{i}", key="k", exit_code=0, duration_s=0.1))
            if errors:
                break
    finally:
        stop.set()
        drawer.join()
        sys.setswitchinterval(interval)
    assert errors == []


# -- what scrolls -----------------------------------------------------------------------------


def test_every_log_line_and_state_change_scrolls_prefixed_by_its_step() -> None:
    lines = play(sample_run())

    assert "gen   | cached (3b4d7fdf3b4d, saved 12.5s)" in lines
    # A step that ends at once (before any redraw) still shows its lines, in order.
    upper = [line for line in lines if line.startswith("upper |")]
    assert upper[1:4] == [
        "upper | upper: ./numbers.txt",
        "upper | warning: almost done",
        "upper | done in 0.1s",
    ]
    assert any(line.startswith("fail  | FAILED: exited with code 3") for line in lines)


def test_expansions_of_a_matrix_step_stay_told_apart_in_a_narrow_prefix() -> None:
    names = [f"sweep[tag=179dd6-{i}]" for i in (7, 17, 170)]
    events: list[Event] = [started(*names)]
    for name in names:
        events += [
            StepStarted(step=name, key="k", container_id="c0ffee" * 8),
            log_line(name, "stdout", f"line of {name}"),
        ]

    narrow = play(events, width=80)
    prefixes = {line.split(" | ")[0] for line in narrow if line.startswith("sweep[…")}
    assert prefixes == {"sweep[…179dd6-7]", "sweep[…79dd6-17]", "sweep[…9dd6-170]"}
    # A wide terminal gives the names room: shown whole.
    wide = play(events, width=160)
    assert "sweep[tag=179dd6-170] | line of sweep[tag=179dd6-170]" in wide


def test_short_names_keep_their_start_and_their_end() -> None:
    assert short_name("sweep[tag=179dd6-17]", 16) == "sweep[…79dd6-17]"
    assert short_name("calibrate[field=3C286,chan=12]", 16) == "calibr…,chan=12]"
    assert short_name("short", 16) == "short"
    assert all(len(short_name("x" * 40, width)) == width for width in range(2, 30))


def test_each_step_keeps_its_own_colour_in_its_prefix() -> None:
    console = terminal()
    display = LiveDisplay(console=console, refresh_per_second=20)
    for event in sample_run():
        display(event)
    display.close()
    assert isinstance(console.file, io.StringIO)
    raw = console.file.getvalue()
    colours = {}
    for step in ("gen", "upper", "fail"):
        found = set(re.findall(rf"(\x1b\[[0-9;]+m){step}\s*\|", raw))
        assert len(found) == 1, (step, found)  # the same colour on every line of the step
        colours[step] = found.pop()
    assert len(set(colours.values())) == 3  # and different steps, different colours


def test_the_summary_holds_each_failed_steps_last_lines_and_log_path() -> None:
    lines = play(sample_run())
    end = lines[lines.index(next(x for x in lines if x.startswith("summary:"))) :]

    assert end[0] == "summary: run r1 FAILED: 1 ran, 1 cached, 1 failed in 2.0s; cache saved 12.5s"
    assert end[1] == "fail failed: exit 3: exited with code 3"
    assert end[2:4] == ["  | fail: about to fail", "  | something went wrong"]
    assert end[4] == "  full log: /cache/logs/r1/fail.log"


def test_the_summary_says_once_how_a_matrix_step_failed_in_each_of_its_expansions() -> None:
    names = [f"bad[tag={i}]" for i in range(300)]
    everyone = [*names, "odd", "bad[tag=x]"]
    matrix = {name: "bad" for name in everyone if name != "odd"}
    events: list[Event] = [RunStarted(run_id="r1", steps=everyone, jobs=4, matrix=matrix)]
    for name in [*names, "odd", "bad[tag=x]"]:
        events.append(StepStarted(step=name, key="k", container_id="c0ffee" * 8))
        last = ["fail: about to fail", "no x" if name.endswith("x]") else "something went wrong"]
        events.append(
            StepFailed(
                step=name,
                key="k",
                reason="exited with code 3",
                exit_code=3,
                last_lines=last,
                log_path=f"/cache/logs/r1/{name}.log",
            )
        )
    events.append(finished(ok=False, ran=302, failed=302))

    lines = play(events, width=200, logs="none")
    end = lines[lines.index(next(x for x in lines if x.startswith("summary:"))) :]

    assert end[1:13] == [
        "bad (300 expansions: bad[tag=0] … bad[tag=299]) failed: exit 3: exited with code 3",
        "  | fail: about to fail",
        "  | something went wrong",
        "  full logs: /cache/logs/r1/bad[tag=0].log and 299 more beside it",
        "odd failed: exit 3: exited with code 3",
        "  | fail: about to fail",
        "  | something went wrong",
        "  full log: /cache/logs/r1/odd.log",
        "bad[tag=x] failed: exit 3: exited with code 3",  # failed otherwise: said on its own
        "  | fail: about to fail",
        "  | no x",
        "  full log: /cache/logs/r1/bad[tag=x].log",
    ]


def test_logs_none_shows_no_log_lines_but_the_failed_steps_last_lines_in_the_summary() -> None:
    lines = play(sample_run(), logs="none")

    assert not any("upper: ./numbers.txt" in line for line in lines)
    assert "upper | done in 0.1s" in lines
    assert "  | something went wrong" in lines
    assert "  full log: /cache/logs/r1/fail.log" in lines


def test_logs_failed_shows_only_a_failed_steps_last_lines_after_its_failure() -> None:
    lines = play(sample_run(), logs="failed")

    assert not any("upper: ./numbers.txt" in line for line in lines)
    failure = next(i for i, line in enumerate(lines) if line.startswith("fail  | FAILED"))
    assert lines[failure + 1 : failure + 3] == [
        "fail  | fail: about to fail",
        "fail  | something went wrong",
    ]


def test_a_flood_is_summarised_on_screen_with_where_its_full_log_is() -> None:
    events: list[Event] = [started("flood"), StepStarted(step="flood", key="k", container_id="c")]
    events += [log_line("flood", "stdout", f"line {i}") for i in range(1, 100_001)]
    events += [
        StepFinished(
            step="flood", key="k", exit_code=0, duration_s=1.0, log_path="/cache/e/log.txt"
        ),
        finished(ran=1),
    ]
    lines = play(events)  # its cost is measured by benchmarks/logflood.py

    flood = [line for line in lines if re.fullmatch(r"flood \| line \d+", line)]
    assert flood[0] == "flood | line 1"  # the start of the flood is shown, then a sample
    assert LINES_PER_SECOND <= len(flood) < 1000
    hidden = 100_000 - len(flood)
    assert (
        f"flood | … {hidden:,} lines of this step were not shown; full log: /cache/e/log.txt"
        in (lines)
    )


def test_a_long_line_without_spaces_folds_under_its_text_and_keeps_the_prefix() -> None:
    path = "/data/" + "x" * 150 + "/missing.txt"
    events = [
        started("talk"),
        StepStarted(step="talk", key="k", container_id="c"),
        log_line("talk", "stderr", f"error: {path} not found"),
        log_line("talk", "stdout", "p" * 500),
        StepFinished(step="talk", key="k", exit_code=0, duration_s=1.0),
        finished(ran=1),
    ]
    lines = play(events, width=60)

    scroll = lines[: lines.index("talk | done in 1.0s")]
    assert all(len(line) <= 60 for line in scroll)
    start = lines.index("talk | error:")
    folded = lines[start + 1 : start + 5]
    assert all(line.startswith("       ") for line in folded)  # under the text, not the name
    joined = "".join(line.strip() for line in folded)
    assert joined.startswith(path + " not found")
    assert "talk | done in 1.0s" in lines  # the state of the step is still shown whole


# -- the pinned panel -------------------------------------------------------------------------


def test_thirty_parallel_steps_fit_a_40_line_terminal() -> None:
    names = [f"step-{i:02d}" for i in range(30)]
    view = RunView()
    view.update(started(*names, "last", jobs=30))
    for name in names:
        view.update(StepStarted(step=name, key="k", container_id="c"))
    for width in (120, 60):
        lines = panel(view, width=width, height=40)
        assert len(lines) <= 40 // 3
        text = "\n".join(lines)
        for name in names:  # every running step is named, with its time
            assert re.search(rf"{name} \d+\.\ds", text), (width, name)
        assert "30 running  1 waiting" in text
        assert all(len(line) <= width for line in lines)


def test_the_panel_counts_a_matrix_steps_failed_expansions_as_one() -> None:
    names = [f"bad[tag={i}]" for i in range(300)]
    view = RunView()
    view.update(
        RunStarted(run_id="r1", steps=[*names, "odd"], jobs=4, matrix=dict.fromkeys(names, "bad"))
    )
    for name in [*names[:276], "odd", names[299]]:
        view.update(StepFailed(step=name, key="k", reason="exited with code 3", exit_code=3))

    text = "\n".join(panel(view, width=100, height=20))

    assert "failed: bad ×277, odd" in text  # not 'bad[tag=0], bad[tag=1], ...' cut short


def test_a_short_terminal_keeps_the_running_and_failed_steps_and_collapses_the_rest() -> None:
    names = [f"step-{i:02d}" for i in range(40)]
    view = RunView()
    view.update(started(*names, jobs=40))
    for name in names[:20]:
        view.update(StepFinished(step=name, key="k", exit_code=0, duration_s=1.0))
    for name in names[20:]:
        view.update(StepStarted(step=name, key="k", container_id="c"))
    view.update(StepFailed(step="step-39", key="k", reason="exited with code 1", exit_code=1))

    lines = panel(view, width=60, height=20)
    text = "\n".join(lines)
    assert len(lines) <= 6
    assert "failed: step-39" in text
    assert "step-20" in text and "+8 more" in text  # running steps first, the rest counted
    assert "19 running  20 done  1 failed" in text


def test_a_running_steps_time_is_never_cut() -> None:
    view = RunView()
    view.update(started("a-rather-long-step-name", jobs=1))
    view.update(StepStarted(step="a-rather-long-step-name", key="k", container_id="c"))
    view.steps["a-rather-long-step-name"].since = time.monotonic() - 125
    (line,) = [x for x in panel(view, width=60) if "a-rather" in x]
    assert line.strip() == "a-rather-long-step-name 2m05s"


def test_copying_join_inputs_shows_preparing_and_a_lock_wait_says_so() -> None:
    view = RunView()
    view.update(started("merge", "twin"))
    view.update(StepPreparing(step="merge", inputs=["upper", "lower"]))
    view.update(StepWaitingForLock(step="twin", key="k"))
    text = "\n".join(panel(view))
    assert re.search(r"merge preparing \d+\.\ds", text)
    assert re.search(r"twin waiting for another run \d+\.\ds", text)

    lines = play(
        [
            started("merge", "twin"),
            StepPreparing(step="merge", inputs=["upper", "lower"]),
            StepWaitingForLock(step="twin", key="k"),
            StepFinished(step="twin", key="k", exit_code=0, duration_s=1.5, waited_s=13.0),
        ]
    )
    assert "merge | preparing: copying upper, lower into /work" in lines
    assert "twin  | waiting for another run, which is computing the same key" in lines
    assert "twin  | done in 1.5s (after waiting 13s for another run)" in lines


def test_the_progress_line_has_an_eta_from_past_durations_when_every_step_has_one() -> None:
    view = RunView()
    view.update(started("a", "b", jobs=2, a=30.0, b=60.0))
    (progress,) = [x for x in panel(view) if "settled" in x]
    assert "0/2 settled" in progress and "ETA 1m00s" in progress

    view = RunView()
    view.update(started("a", "b", jobs=2, a=30.0))  # b has never run: no guess
    (progress,) = [x for x in panel(view) if "settled" in x]
    assert "ETA" not in progress


def test_no_color_draws_without_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    console = Console(file=io.StringIO(), width=80, height=40, force_terminal=True)
    display = LiveDisplay(console=console, refresh_per_second=20)
    for event in sample_run():
        display(event)
    display.close()
    assert isinstance(console.file, io.StringIO)
    raw = console.file.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)", raw), "no colour codes"
    assert "fail  | FAILED" in ANSI.sub("", raw)  # the words carry the meaning


def test_an_image_built_before_the_run_starts_is_named_whole_and_then_waits() -> None:
    from kliko_async.events import ImageBuilding, ImageBuilt

    events: list[Event] = [
        ImageBuilding(step="simulate", context="./sim"),
        ImageBuilt(step="simulate", context="./sim", image_id="sha256:" + "a" * 64),
        started("simulate", "image"),
    ]
    lines = play(events)
    assert "simulate | building image from ./sim" in lines
    view = RunView()
    for event in events:
        view.update(event)
    assert "2 waiting" in "\n".join(panel(view))


def test_steps_that_end_before_they_began_scroll_ten_of_a_kind_and_a_count() -> None:
    # Ctrl-C in a 10,000-way matrix scrolled a "cancelled" line for every waiting step.
    names = [f"s{i:03d}" for i in range(40)]
    events: list[Event] = [started(*names)]
    events.append(StepStarted(step="s000", key="k", container_id="c0ffee" * 8))
    events.append(StepFailed(step="s000", key="k", reason="exited with code 3", exit_code=3))
    events += [StepSkipped(step=n, reason="an earlier step failed") for n in names[1:26]]
    events.append(StepStarted(step="s026", key="k", container_id="c0ffee" * 8))
    events += [StepCancelled(step=n) for n in names[26:]]
    events.append(finished(ok=False, failed=1, skipped=25, cancelled=14))

    lines = play(events)

    assert len([line for line in lines if "| skipped: an earlier step failed" in line]) == 10
    cancelled = [line for line in lines if line.endswith("| cancelled")]
    assert len(cancelled) == 11  # ten that waited, and the running one, which is always said
    assert any(line.startswith("s026 | cancelled") for line in lines)
    assert any(
        "… and 15 more steps skipped (each, and why: kliko-async report r1)" in line
        for line in lines
    )
    assert any("… and 3 more steps cancelled before they started" in line for line in lines)


def test_the_summary_says_ten_failures_in_full_and_counts_the_rest() -> None:
    names = [f"s{i:03d}" for i in range(30)]
    events: list[Event] = [started(*names)]
    for name in names:
        events.append(StepStarted(step=name, key="k", container_id="c0ffee" * 8))
        last = [f"line {j} of {name}" for j in range(10)]
        events.append(
            StepFailed(
                step=name, key="k", reason="exited with code 1", exit_code=1, last_lines=last
            )
        )
    events.append(finished(ok=False, failed=30))

    lines = play(events, height=400)

    last_drawn = max(i for i, line in enumerate(lines) if line.startswith("summary:"))
    summary = lines[last_drawn:]
    assert len([line for line in summary if " failed: exit 1: exited with code 1" in line]) == 10
    assert not any("line 0 of s010" in line for line in summary)
    more = "… and 20 more failed steps (s010, s011, s012 …): each, its reason and its log in"
    assert any(line.startswith(more) for line in summary), summary[-3:]
