"""The rich live view, seen as a person sees it: through a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from kliko_async.events import EVENT_ADAPTER, LogLine

ROOT = Path(__file__).resolve().parents[2]
KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def run_in_pty(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdout; return its exit code and screen text."""
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="120", LINES="40", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        args, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("the live view produced nothing for a minute")
        try:
            data = os.read(leader, 1 << 16)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.usefixtures("example_images")
def test_live_view_on_a_terminal_shows_rows_cache_hits_and_logs(tmp_path: Path) -> None:
    chain = ROOT / "examples" / "chains" / "diamond.yaml"
    args = [KLIKO_ASYNC, "run", str(chain), "--cache-dir", str(tmp_path / "c"), "--out", "o"]

    code, raw = run_in_pty(args, tmp_path)
    assert code == 0, raw
    assert "\x1b[" in raw, "a terminal gets the live view, drawn with control codes"
    screen = ANSI.sub("", raw)
    for step in ("gen", "upper", "lower", "merge"):
        assert re.search(rf"{step}\s+done", screen), f"no finished row for {step}"
    assert "summary" in screen

    code, raw = run_in_pty(args, tmp_path)
    screen = ANSI.sub("", raw)
    assert code == 0
    for step in ("gen", "upper", "lower", "merge"):
        assert re.search(rf"{step}\s+cached", screen), f"no cache-hit row for {step}"
    assert "summary" in screen


@pytest.mark.usefixtures("example_images")
def test_running_steps_show_their_latest_log_lines(tmp_path: Path) -> None:
    chain = tmp_path / "slow.yaml"
    chain.write_text(
        "steps:\n  talk:\n    image: example/sleep\n    params: {seconds: 1.5, tag: live-view}\n"
    )
    code, raw = run_in_pty(
        [KLIKO_ASYNC, "run", str(chain), "--cache-dir", str(tmp_path / "c"), "--out", "o"],
        tmp_path,
    )
    screen = ANSI.sub("", raw)
    assert code == 0
    assert re.search(r"talk\s+running", screen), "the step was shown running"
    assert "sleep: 1.5s" in screen, "its log line was shown while it ran"


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
