"""Following a Slurm job's log files: fetched in pieces of bounded size (in a worker thread, by
the runtime) and delivered as whole lines, attempts kept apart (issue 19)."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.slurm.logfiles import READ_LIMIT, LogFiles, look_at_job_files


def test_a_big_log_is_read_a_bounded_piece_at_a_time_and_delivered_whole(
    tmp_path: Path,
) -> None:
    lines = [f"line {i:07d} " + "x" * 90 for i in range(100_000)]  # 10 MB
    (tmp_path / "stdout").write_text("".join(f"{line}\n" for line in lines))
    (tmp_path / "stderr").write_text("half a line")
    got: list[tuple[str, str]] = []
    logs = LogFiles(tmp_path, lambda stream, text, *at: got.append((stream, text)))

    pieces = []
    while chunks := logs.fetch():
        assert all(len(chunk) <= READ_LIMIT for _, chunk in chunks)
        pieces.append(chunks)
        logs.deliver(chunks)
    logs.flush()

    assert len(pieces) >= 3, "10 MB is read in pieces, never at once"
    assert [text for stream, text in got if stream == "stdout"] == lines
    assert [text for stream, text in got if stream == "stderr"] == ["half a line"]


def test_one_look_at_a_job_folder_reads_its_start_new_bytes_and_whether_it_ended(
    tmp_path: Path,
) -> None:
    logs = LogFiles(tmp_path, lambda *args: None)
    assert look_at_job_files(tmp_path, logs) == ("", [], False)  # not started yet
    (tmp_path / "started").write_text("node1 0\n")
    (tmp_path / "stdout").write_text("hello\n")
    assert look_at_job_files(tmp_path, logs) == ("node1 0\n", [("stdout", b"hello\n")], False)
    (tmp_path / "status").write_text("0\n")
    assert look_at_job_files(tmp_path, logs) == ("node1 0\n", [], True)
