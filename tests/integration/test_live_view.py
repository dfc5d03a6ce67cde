"""The rich live view, seen as a person sees it: through a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyte
import pytest

from conftest import out_too_deep_to_copy_into
from kliko_async.cache.logfiles import log_content
from kliko_async.events import EVENT_ADAPTER, LogLine

ROOT = Path(__file__).resolve().parents[2]
KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass
class Terminal:
    """What a person saw: the exit code, the final screen and every line scrolled above it."""

    code: int
    raw: str
    screen: list[str]
    scrollback: list[str]

    @property
    def everything(self) -> list[str]:
        return self.scrollback + self.screen


def run_in_pty(
    args: list[str],
    cwd: Path,
    *,
    columns: int = 120,
    lines: int = 40,
    timeout: float = 90,
    limit: float = 300,
    when: Callable[[list[str], str, subprocess.Popen[bytes], int], None] | None = None,
    env: dict[str, str] | None = None,
) -> Terminal:
    """Run a command on a pseudo-terminal of the given size, drawn by a terminal emulator.

    ``when(screen, text_so_far, process, leader_fd)`` is called after each read, to act as a
    person would (press Ctrl-C, resize the window). A run still drawing after ``limit`` seconds
    hangs: it is killed, and its containers removed.
    """
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    environment = dict(os.environ, TERM="xterm-256color") | (env or {})
    for name in ("COLUMNS", "LINES"):
        environment.pop(name, None)
    if env is None or "NO_COLOR" not in env:
        environment.pop("NO_COLOR", None)
    process = subprocess.Popen(
        args,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env=environment,
        start_new_session=True,
    )
    os.close(follower)
    screen = pyte.HistoryScreen(columns, lines, history=1_000_000)
    stream = pyte.ByteStream(screen)
    chunks: list[bytes] = []
    hung = time.monotonic() + limit
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready or time.monotonic() > hung:
            process.kill()
            process.wait()
            owner = f"label=io.kliko-async.owner={socket.gethostname()}:{process.pid}"
            ids = subprocess.run(
                ["docker", "ps", "-aq", "--filter", owner], capture_output=True, text=True
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
            raise AssertionError("the live view produced nothing for a while, or never ended")
        try:
            data = os.read(leader, 1 << 16)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
        stream.feed(data)
        if when is not None:
            text = b"".join(chunks).decode("utf-8", "replace")
            when([line.rstrip() for line in screen.display], text, process, leader)
            if screen.columns != _size(leader)[1] or screen.lines != _size(leader)[0]:
                screen.resize(*_size(leader))
    os.close(leader)
    code = process.wait(timeout=timeout)
    width = screen.columns
    history = ["".join(line[x].data for x in range(width)).rstrip() for line in screen.history.top]
    return Terminal(
        code,
        b"".join(chunks).decode("utf-8", "replace"),
        [line.rstrip() for line in screen.display],
        history,
    )


def _size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def unfold(lines: list[str], at: int) -> str:
    """Line ``at`` and the lines a long word of it was folded onto (they start with spaces,
    and are not a new line of the summary)."""
    text = lines[at]
    for line in lines[at + 1 :]:
        if not line.startswith(" ") or line.lstrip().startswith(("|", "full log:")):
            break
        text += " " + line.strip()
    return (
        re.sub(r"full\s+log:\s+", "full log: ", text)
        .replace(" ", "")
        .replace("fulllog:", "full log: ")
    )


def run_args(chain: Path, tmp_path: Path, *more: str) -> list[str]:
    return [KLIKO_ASYNC, "run", str(chain), "--cache-dir", str(tmp_path / "c"), "--out", "o", *more]


def steps_yaml(path: Path, steps: dict[str, str]) -> Path:
    path.write_text("steps:\n" + "".join(f"  {n}: {s}\n" for n, s in steps.items()))
    return path


@pytest.mark.usefixtures("example_images")
def test_every_steps_lines_scroll_in_order_and_the_summary_stays(tmp_path: Path) -> None:
    chain = ROOT / "examples" / "chains" / "diamond.yaml"

    seen = run_in_pty(run_args(chain, tmp_path), tmp_path)
    assert seen.code == 0, seen.raw
    assert "\x1b[" in seen.raw, "a terminal gets the live view, drawn with control codes"
    lines = seen.everything
    # gen ends long before a redraw: its own lines are still shown, prefixed by its name.
    gen = [line for line in lines if line.startswith("gen   | ")]
    assert gen[0].startswith("gen   | started (")
    # stdout and stderr are separate streams: the engine may deliver them in either order
    assert sorted(gen[1:3]) == ["gen   | gen: done", "gen   | gen: writing 5 lines"]
    # the time, and what its container used where the engine measured it
    assert len(gen) == 4 and re.fullmatch(r"gen   \| done in \d+\.\ds( \(CPU .*\))?", gen[-1])
    merge = [line.split(" | ", 1)[1] for line in lines if line.startswith("merge | ")]
    assert merge[0] == "preparing: copying upper, lower into /work"
    assert merge[2:4] == ["merge: ./lower/numbers.txt.low", "merge: ./upper/numbers.txt"]
    assert merge[-1].startswith("done in")
    assert [line for line in seen.screen if line][-1].startswith("summary: run ")
    assert not any("settled" in line for line in seen.screen), "the panel gave way to the summary"

    again = run_in_pty(run_args(chain, tmp_path), tmp_path)
    assert again.code == 0
    for step in ("gen", "upper", "lower", "merge"):
        assert any(re.match(rf"{step}\s+\| cached \(\w{{12}}, saved", x) for x in again.everything)
    assert any(line.startswith("summary: run ") and "4 cached" in line for line in again.screen)


@pytest.mark.usefixtures("example_images")
def test_thirty_parallel_steps_fit_a_40_line_terminal(tmp_path: Path) -> None:
    chain = steps_yaml(
        tmp_path / "wide.yaml",
        {
            f"s{i:02d}": f"{{image: example/sleep, params: {{seconds: 2, tag: t{i}}}}}"
            for i in range(30)
        },
    )
    seen = run_in_pty(run_args(chain, tmp_path, "--jobs", "30"), tmp_path)
    assert seen.code == 0, seen.raw
    # Each redraw moves the cursor up over the panel it replaces: never more than a third.
    ups = [m.count("\x1b[1A") for m in re.findall(r"(?:\x1b\[1A|\x1b\[2K)+", seen.raw)]
    assert ups and max(ups) <= 40 // 3, max(ups)
    panels = [line for line in seen.raw.split("\n") if "settled" in line]
    assert panels, "the panel was drawn"
    started = [x for x in seen.everything if re.match(r"s\d\d \| started", x)]
    assert len(started) == 30
    assert any("30 done" in x or "30 ran" in x for x in seen.screen)


@pytest.mark.usefixtures("example_images")
def test_a_flood_is_summarised_on_screen_and_saved_whole(tmp_path: Path) -> None:
    chain = steps_yaml(
        tmp_path / "flood.yaml", {"flood": "{image: example/flood, params: {lines: 100000}}"}
    )
    seen = run_in_pty(run_args(chain, tmp_path), tmp_path)
    assert seen.code == 0, seen.raw
    shown = [x for x in seen.everything if re.fullmatch(r"flood \| line \d+", x)]
    assert 0 < len(shown) < 1000
    lines = seen.everything
    (at,) = [i for i, x in enumerate(lines) if "lines of this step were not shown" in x]
    hidden = int(re.search(r"… ([\d,]+) lines", lines[at])[1].replace(",", ""))  # type: ignore[index]
    assert hidden == 100_000 - len(shown)
    (log,) = (tmp_path / "c").rglob("log.txt")
    assert f"full log: {log}" in unfold(lines, at)
    assert log_content(log).decode().splitlines() == [f"line {i}" for i in range(1, 100_001)]


@pytest.mark.usefixtures("example_images")
def test_a_failed_step_shows_its_last_lines_and_log_in_the_summary_even_with_logs_none(
    tmp_path: Path,
) -> None:
    long = "/data/" + "x" * 150 + "/missing.txt"
    chain = steps_yaml(
        tmp_path / "fail.yaml",
        {"broken": f"{{image: example/fail, params: {{message: '{long}'}}}}"},
    )
    seen = run_in_pty(run_args(chain, tmp_path, "--logs", "none"), tmp_path, columns=60)
    assert seen.code == 1, seen.everything
    assert not any("broken | fail: about to fail" in x for x in seen.everything)
    screen = seen.everything
    start = next(i for i, x in enumerate(screen) if x.startswith("broken failed: exit 3"))
    end = "\n".join(screen[start:])
    assert "| fail: about to fail" in end
    assert long in "".join(x.strip().lstrip("| ") for x in screen[start:])  # folded, all there
    at = next(i for i, x in enumerate(screen) if x.startswith("  full log: "))
    (log,) = (tmp_path / "c").rglob("broken.log")
    assert unfold(screen, at).strip() == f"full log: {log}"


@pytest.mark.usefixtures("example_images")
def test_ctrl_c_leaves_no_copy_of_the_panel_behind(tmp_path: Path) -> None:
    chain = steps_yaml(
        tmp_path / "slow.yaml", {"nap": "{image: example/sleep, params: {seconds: 30, tag: c}}"}
    )
    pressed: list[bool] = []

    def press_ctrl_c(
        screen: list[str], text: str, process: subprocess.Popen[bytes], leader: int
    ) -> None:
        if not pressed and "nap | sleep: 30" in ANSI.sub("", text):
            pressed.append(True)
            os.write(leader, b"\x03")  # the terminal echoes ^C ...
            os.killpg(process.pid, signal.SIGINT)  # ... and interrupts the foreground group

    seen = run_in_pty(run_args(chain, tmp_path), tmp_path, when=press_ctrl_c)
    assert pressed and seen.code == 130, seen.raw
    lines = seen.everything
    assert sum("kliko-async: stopping" in x for x in lines) == 1
    assert not any("settled" in x for x in lines), "no copy of the panel is left"
    assert any(x.startswith("summary: run ") and "1 cancelled" in x for x in seen.screen)


# The progress line of a panel drawn for a narrow terminal: the bar at the start (no run id),
# its label on the same line. A frame drawn for the old width, shown on the narrowed screen,
# starts "run <id>" and has its label wrapped onto the next line.
NARROW_PROGRESS = re.compile(r"[█░]+ [0-2]/2 settled")
LEFT_PANEL = re.compile(r"[█░]+ \d+/\d+ settled")  # a progress line, at any width


def test_no_color_and_a_resize_while_running(
    tmp_path: Path, held_image: str, release: Callable[..., None]
) -> None:
    """Both steps run until the test has seen the panel drawn for the new width: which of them
    ends first, and when, cannot matter."""
    chain = steps_yaml(
        tmp_path / "two.yaml", {n: f"{{image: {held_image}, params: {{tag: {n}}}}}" for n in "ab"}
    )
    resized: list[float] = []
    released: list[bool] = []
    after: list[list[str]] = []  # the screens drawn after the resize

    def shrink(screen: list[str], text: str, process: subprocess.Popen[bytes], leader: int) -> None:
        if not resized:
            plain = ANSI.sub("", text)
            if "a | held" in plain and "b | held" in plain:
                resized.append(time.monotonic())
                fcntl.ioctl(leader, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 60, 0, 0))
                os.killpg(process.pid, signal.SIGWINCH)
            return
        after.append(screen)
        narrow = any(NARROW_PROGRESS.match(x) for x in screen)
        if not released and (narrow or time.monotonic() > resized[0] + 60):  # or a hang
            released.append(True)
            release(process.pid, "a", "b")

    args = run_args(chain, tmp_path, "--jobs", "2")  # both at once, on one CPU too
    seen = run_in_pty(args, tmp_path, when=shrink, env={"NO_COLOR": "1"})
    assert resized and released and seen.code == 0, seen.raw
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)m", seen.raw), "no colours"
    narrow = [x for s in after for x in s if NARROW_PROGRESS.match(x)]
    assert narrow, f"the panel was drawn again for 60 columns after the resize: {after[-1:]}"
    assert [x for x in seen.everything if LEFT_PANEL.search(x)] == [], "no copy of the panel"
    assert not any("settled" in x for x in seen.screen)
    assert any(x.startswith("summary: run ") for x in seen.screen)


def test_piped_output_is_plain_lines(tmp_path: Path, example_images: None) -> None:
    chain = ROOT / "examples" / "chains" / "diamond.yaml"
    done = subprocess.run(
        [KLIKO_ASYNC, "run", str(chain), "--cache-dir", str(tmp_path / "c"), "--out", "o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    assert "gen | gen: writing 5 lines" in done.stdout.splitlines()


def test_json_output_is_one_event_per_line_with_every_log_line(
    tmp_path: Path, example_images: None
) -> None:
    chain = ROOT / "examples" / "chains" / "diamond.yaml"
    done = subprocess.run(
        [KLIKO_ASYNC, "run", str(chain), "--json", "--cache-dir", str(tmp_path / "c")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = [EVENT_ADAPTER.validate_json(line) for line in done.stdout.splitlines()]
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("step_finished") == 4
    logs = [e for e in events if isinstance(e, LogLine) and e.step == "merge"]
    assert [e.text for e in logs] == [
        "merge: ./lower/numbers.txt.low",
        "merge: ./upper/numbers.txt",
    ]


@pytest.mark.usefixtures("example_images")
def test_quiet_run_whose_outputs_cannot_be_copied_does_not_say_ok(tmp_path: Path) -> None:
    chain = ROOT / "examples" / "chains" / "diamond.yaml"
    out = str(out_too_deep_to_copy_into(tmp_path))  # the run succeeds, its copy fails
    done = subprocess.run(
        [KLIKO_ASYNC, "run", str(chain), "-q", "--cache-dir", str(tmp_path / "c"), "--out", out],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert " ok" not in done.stdout
    (summary,) = done.stdout.splitlines()
    assert (
        summary.startswith("run ")
        and "FAILED (not all of its outputs were copied to --out)" in summary
    )
    assert "could not copy the output of step" in done.stderr
    assert "Traceback" not in done.stderr
