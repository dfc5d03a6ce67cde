"""Outputs and logs exactly as the containers wrote them, and the user's own files left alone:
modes through join IO and ``--out``, exports that never replace what kliko-async did not write,
terminal escape sequences kept out of ``--plain`` but in the saved log."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

SPLIT = "schema_version: 3\nname: {name}\nio: split\nsections: []\n"
JOIN = "schema_version: 3\nname: {name}\nio: join\nsections: []\n"

# Writes an executable tool and prints what a hostile program might: clear the screen, move the
# cursor, set the window title.
TOOLMAKER = r"""#!/bin/sh
printf '#!/bin/sh\necho tool ran\n' > /output/tool.sh
chmod 755 /output/tool.sh
printf 'before\033[2J\033[H\033]0;PWNED\007after\n'
"""
TOOLUSER = "#!/bin/sh\n/work/tool.sh\n"
# A named pipe in /output; the other file is fine.
PIPER = "#!/bin/sh\necho fine > /output/fine.txt\nmkfifo /output/pipe\necho made a pipe\n"
# A file name and log lines that are not UTF-8 (latin-1), stdout and stderr interleaved, a CR.
LATIN1 = r"""#!/bin/sh
printf 'caf\351\n' > "/output/caf$(printf '\351').txt"
printf 'out caf\351\n'
sleep 0.2
printf 'err \377\376 binary\r\n' >&2
sleep 0.2
printf 'out again\n'
"""


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("output-images")
    tags: dict[str, str] = {}
    kinds = {"toolmaker": (SPLIT, TOOLMAKER), "tooluser": (JOIN, TOOLUSER)}
    kinds |= {"piper": (SPLIT, PIPER), "latin1": (SPLIT, LATIN1)}
    try:
        for name, (spec, script) in kinds.items():
            tags[name] = kliko_image_builder(root / name, spec.format(name=name), script)
        yield tags
    finally:
        if tags:
            subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


def tool_chain(tmp_path: Path, images: dict[str, str]) -> Path:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        f"  data: {{image: {images['toolmaker']}}}\n"
        f"  use: {{image: {images['tooluser']}, inputs: [data]}}\n"
    )
    return chain


def test_executables_stay_executable_in_join_work_and_in_out(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    out = tmp_path / "out"

    done = kliko("run", tool_chain(tmp_path, images), "--cache-dir", tmp_path / "c", "--out", out)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "use | tool ran" in done.stdout
    for step in ("data", "use"):
        mode = stat.S_IMODE((out / step / "tool.sh").stat().st_mode)
        assert mode == 0o755, f"{step}: {stat.filemode(mode)}"


def test_plain_output_strips_escape_sequences_and_the_saved_log_keeps_them(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    chain = tool_chain(tmp_path, images)

    done = kliko("run", chain, "--cache-dir", tmp_path / "c", "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "data | beforeafter" in done.stdout
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout, repr(done.stdout)
    logged = kliko.raw("logs", chain, "data", "--cache-dir", tmp_path / "c")
    assert b"before\x1b[2J\x1b[H\x1b]0;PWNED\x07after" in logged.stdout


def test_out_never_replaces_a_folder_kliko_async_did_not_write(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    """``--out .`` and a step named ``data``: the user's ``data/raw.ms`` stays."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.ms").write_text("observations")
    chain = tool_chain(tmp_path, images)

    refused = kliko("run", chain, "--cache-dir", tmp_path / "c", "--out", ".", "--plain")

    assert refused.returncode == 2  # an --out that cannot be used: bad input
    assert "data already exists and kliko-async did not write it" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert " | started" not in refused.stdout, "refused before any step runs"
    assert (tmp_path / "data" / "raw.ms").read_text() == "observations"
    (tmp_path / "data" / "raw.ms").unlink()
    (tmp_path / "data").rmdir()
    first = kliko("run", chain, "--cache-dir", tmp_path / "c", "--out", ".", "--plain")
    again = kliko("run", chain, "--cache-dir", tmp_path / "c", "--out", ".", "--plain")
    assert first.returncode == again.returncode == 0, again.stdout + again.stderr
    assert "copied data to data (1 file," in first.stdout
    assert "data is in data already, unchanged (1 file," in again.stdout, "its own: kept"
    assert (tmp_path / "data" / "tool.sh").exists()


def test_a_symlinked_step_folder_under_out_is_refused_clearly(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious").mkdir()
    (out / "data").symlink_to(tmp_path / "precious")

    done = kliko("run", tool_chain(tmp_path, images), "--cache-dir", tmp_path / "c", "--out", out)

    assert done.returncode == 2
    assert f"{out / 'data'} is a symbolic link (to {tmp_path / 'precious'})" in done.stderr
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "precious").iterdir()) == []


def test_a_named_pipe_in_an_output_fails_its_step_and_is_never_published(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        f"steps:\n  piper: {{image: {images['piper']}}}\n"
        "  gen: {image: example/gen, params: {n: 1}, inputs: []}\n"
    )
    cache, out = tmp_path / "c", tmp_path / "out"

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain", "--keep-going")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "piper | FAILED: its output holds a named pipe (output/pipe)" in done.stdout
    assert "nothing of the step was published" in done.stdout
    assert "1 failed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gen"], "the other step is exported"
    listed = kliko("cache", "ls", "--cache-dir", cache)
    assert "piper" not in listed.stdout and "gen" in listed.stdout
    logged = kliko("logs", chain, "piper", "--cache-dir", cache)
    assert logged.stdout == "made a pipe\n", "the failed attempt's log is kept"
    assert list((cache / "tmp").iterdir()) == []
    # Until gc finds it old: then the run's log folder and the unused lock files go too.
    time.sleep(1.1)
    tidied = kliko("cache", "gc", "--older-than", "1s", "--cache-dir", cache)
    assert tidied.returncode == 0, tidied.stderr
    assert "removed 1 entry" in tidied.stdout and "1 old run log folder(s)" in tidied.stdout
    assert list((cache / "logs").iterdir()) == [] and list((cache / "locks").iterdir()) == []
    assert list((cache / "entries").iterdir()) == [], "and the emptied shard folders"


def test_names_and_logs_that_are_not_utf8_are_kept_byte_for_byte(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  latin: {{image: {images['latin1']}}}\n")
    cache, out = tmp_path / "c", tmp_path / "out"

    done = kliko.raw("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "latin | out caf\ufffd".encode() in done.stdout, "shown decoded, never raw"
    name = os.fsdecode(b"caf\xe9.txt")
    assert (out / "latin" / name).read_bytes() == b"caf\xe9\n"
    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 0, verified.stdout
    logged = kliko.raw("logs", chain, "latin", "--cache-dir", cache)
    assert logged.stdout == b"out caf\xe9\nerr \xff\xfe binary\r\nout again\n"
    stamped = kliko.raw("logs", chain, "latin", "--cache-dir", cache, "--timestamps")
    records = [line.split(b" ", 2) for line in stamped.stdout.split(b"\n")[:-1]]
    assert [(stream, text) for _, stream, text in records] == [
        (b"stdout", b"out caf\xe9"),
        (b"stderr", b"err \xff\xfe binary\r"),
        (b"stdout", b"out again"),
    ]
    stamps = [datetime.fromisoformat(at.decode()[:26] + "+00:00") for at, _, _ in records]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= timedelta(seconds=0.3)
