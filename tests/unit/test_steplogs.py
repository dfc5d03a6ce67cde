"""A step's saved log: the container's bytes exactly, whatever text a runtime hands over."""

from __future__ import annotations

import errno
from pathlib import Path

from kliko_async.engine.steplogs import StepLog

AT = "2026-12-06T00:00:00.000000Z"


def written(tmp_path: Path, *lines: tuple[str, str]) -> list[bytes]:
    log = StepLog(tmp_path / "log.txt")
    for text, at in lines:
        log.write_line("stdout", text, at)
    log.close()
    assert log.error is None
    return (tmp_path / "log.txt").read_bytes().split(b"\n")[:-1]  # a record ends in \n


def test_bytes_that_are_not_utf8_are_saved_as_the_container_wrote_them(tmp_path: Path) -> None:
    raw = b"caf\xc3\xa9 \xff\x80 end\r"
    text = raw.decode("utf-8", "surrogateescape")

    assert written(tmp_path, (text, AT)) == [f"{AT} stdout ".encode() + raw]


def test_a_surrogate_that_is_no_escaped_byte_becomes_a_question_mark(tmp_path: Path) -> None:
    text = "lone \ud800 high, escaped \udcff kept"

    assert written(tmp_path, (text, AT), ("next", AT)) == [
        f"{AT} stdout ".encode() + b"lone ? high, escaped \xff kept",
        f"{AT} stdout next".encode(),
    ]


def test_a_surrogate_in_the_time_stamp_is_replaced_not_recursed_on(tmp_path: Path) -> None:
    # A library caller's runtime gave it; before, the fallback re-encoded only the text and
    # called itself until RecursionError.
    assert written(tmp_path, ("x \udcff", f"{AT}\ud800")) == [f"{AT}? stdout x ".encode() + b"\xff"]


def test_lines_beyond_one_buffer_and_a_huge_line_are_saved_whole_and_in_order(
    tmp_path: Path,
) -> None:
    huge = "h" * (3 * StepLog.BUFFER + 7)  # written as it is, after what was buffered before it
    lines = [(f"line {n}", AT) for n in range(5000)]  # several buffers full
    lines.insert(2500, (huge, AT))

    assert written(tmp_path, *lines) == [f"{AT} stdout {text}".encode() for text, _at in lines]


def test_a_log_that_cannot_be_written_says_so_once_and_stops_the_step() -> None:
    log = StepLog(Path("/dev/full"))
    told: list[str] = []
    log.on_error = lambda: told.append("stop")
    log.write_line("stdout", "x" * (2 * StepLog.BUFFER), AT)  # straight to the disk: full
    log.write_line("stdout", "more", AT)
    log.close()
    assert log.error is not None and log.error.errno == errno.ENOSPC
    assert told == ["stop"], "reported once, however many writes failed"


def test_a_full_disk_found_only_at_close_is_reported_too() -> None:
    log = StepLog(Path("/dev/full"))
    told: list[str] = []
    log.on_error = lambda: told.append("stop")
    log.write_line("stdout", "short", AT)  # buffered: the disk is met at close
    log.close()
    assert log.error is not None and told == ["stop"]
