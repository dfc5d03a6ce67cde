"""``--out``: exports replace only what kliko-async wrote, keep modes, run off the event loop and
report their progress as events (on the fake runtime)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.text import Text

from kliko_async import api
from kliko_async.cache.filecopy import copy_file
from kliko_async.cache.processes import host_name
from kliko_async.display.runview import summary_lines
from kliko_async.display.wording import run_message
from kliko_async.engine.exports import EXPORT_MARKER, remove_abandoned_copies
from kliko_async.errors import KlikoError
from kliko_async.events import Event, ExportStarted, OutputExported, RunFinished
from kliko_async.model.chain import Chain, parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

SPLIT_YML = "schema_version: 3\nio: split\nsections: []\n"
JOIN_YML = "schema_version: 3\nio: join\nsections: []\n"


async def write_tool(container: FakeContainer) -> int:
    """Writes an executable tool, a private file and a read-only folder into /output."""
    out = container.path("/output")
    (out / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (out / "tool.sh").chmod(0o755)
    (out / "notes.txt").write_text("notes\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return 0


async def run_tool_in_work(container: FakeContainer) -> int:
    """A join step that needs the tool it was handed in /work to be executable."""
    tool = container.path("/work") / "tool.sh"
    if not os.access(tool, os.X_OK):
        container.log("/work/tool.sh: Permission denied", "stderr")
        return 126
    (container.path("/work") / "ran.txt").write_text("ran\n")
    return 0


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/tool", SPLIT_YML, write_tool)
    runtime.add_image("example/use-tool", JOIN_YML, run_tool_in_work)
    return runtime


def chain_of(tmp_path: Path, **steps: dict[str, object]) -> Chain:
    return parse_chain({"steps": steps}, source=str(tmp_path / "chain.yml"), base_dir=tmp_path)


async def test_modes_are_kept_into_join_work_and_into_out(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(
        tmp_path,
        data={"image": "example/tool"},
        use={"image": "example/use-tool", "inputs": ["data"]},
    )
    out = tmp_path / "out"

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)

    assert result.ok, result.steps["use"].reason
    for step in ("data", "use"):
        tool = out / step / "tool.sh"
        assert stat.S_IMODE(tool.stat().st_mode) == 0o755, step
        assert stat.S_IMODE((out / step / "notes.txt").stat().st_mode) == 0o644
        assert os.access(out / step / "sub", os.W_OK)
    assert (out / "use" / "ran.txt").read_text() == "ran\n"


async def test_a_folder_kliko_async_did_not_write_is_never_replaced(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """``--out .`` with a step named ``data`` must not delete the user's ``data/raw.ms``."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.ms").write_text("years of observations")
    chain = chain_of(tmp_path, data={"image": "example/tool"})

    with pytest.raises(KlikoError) as raised:
        await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=tmp_path)

    message = str(raised.value)
    assert f"{tmp_path / 'data'} already exists and kliko-async did not write it" in message
    assert "Move that folder away, or give another --out" in message
    assert (tmp_path / "data" / "raw.ms").read_text() == "years of observations"
    assert fake.jobs == [], "refused before any step runs"


async def test_an_earlier_export_is_replaced_whole(tmp_path: Path, fake: FakeRuntime) -> None:
    chain = chain_of(tmp_path, data={"image": "example/tool"})
    out = tmp_path / "out"
    await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)
    (out / "data" / "stale.txt").write_text("from an older export")
    marker = json.loads((out / "data" / EXPORT_MARKER).read_text())

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)

    assert result.steps["data"].state == "cached"
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(
        [EXPORT_MARKER, "notes.txt", "sub", "tool.sh"]
    )
    assert marker["step"] == "data" and marker["key"] == result.steps["data"].key
    assert sorted(p.name for p in out.iterdir()) == ["data"], "no temporary folder is left"


@pytest.mark.parametrize("kind", ["symlink", "file"])
async def test_a_link_or_file_in_place_of_a_step_folder_is_refused_clearly(
    tmp_path: Path, fake: FakeRuntime, kind: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    if kind == "symlink":
        (out / "data").symlink_to(elsewhere)
        expected = f"{out / 'data'} is a symbolic link (to {elsewhere})"
    else:
        (out / "data").write_text("mine")
        expected = f"{out / 'data'} exists and is not a folder"
    chain = chain_of(tmp_path, data={"image": "example/tool"})

    with pytest.raises(KlikoError) as raised:
        await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)

    assert expected in str(raised.value)
    assert (elsewhere / "keep.txt").read_text() == "keep"
    assert (out / "data").is_symlink() == (kind == "symlink")


async def test_exports_run_in_a_worker_thread_and_report_progress(
    tmp_path: Path, fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = chain_of(
        tmp_path, a={"image": "example/tool"}, b={"image": "example/tool", "inputs": []}
    )
    threads: set[str] = set()

    def watching_copy_file(src: Path, dst: Path, **options: Any) -> int:
        threads.add(threading.current_thread().name)
        return copy_file(src, dst, **options)

    monkeypatch.setattr("kliko_async.engine.workspace.copy_file", watching_copy_file)
    events: list[Event] = []
    out = tmp_path / "out"

    await api.run(
        chain, runtime=fake, cache_dir=tmp_path / "cache", out=out, on_event=events.append
    )

    assert threads and threading.main_thread().name not in threads
    (started,) = [e for e in events if isinstance(e, ExportStarted)]
    assert started.folder == str(out) and started.steps == ["a", "b"]
    exported = [e for e in events if isinstance(e, OutputExported)]
    assert [(e.step, e.done, e.total, e.files) for e in exported] == [
        ("a", 1, 2, 3),
        ("b", 2, 2, 3),
    ]
    assert exported[0].path == str(out / "a")
    assert events[-1].kind == "run_finished", "the run ends after its exports"
    assert exported[0].size_bytes == len("#!/bin/sh\necho hi\n") + len("notes\n") + 2


async def test_a_cancelled_export_leaves_no_half_copied_folder(
    tmp_path: Path, fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = chain_of(tmp_path, data={"image": "example/tool"})
    out = tmp_path / "out"
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    gate = threading.Event()

    def slow_copy_file(src: Path, dst: Path, **options: Any) -> int:
        gate.set()
        threading.Event().wait(0.2)
        return copy_file(src, dst, **options)

    monkeypatch.setattr("kliko_async.engine.workspace.copy_file", slow_copy_file)

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_when_copying() -> None:
                await anyio.to_thread.run_sync(gate.wait)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_copying)
            await api.export_outputs(result, out)

    assert not scope.cancelled_caught, "the copy stopped at the next file, not at its end"
    assert list(out.iterdir()) == [], "the unfinished copy is removed"


KILLED_MID_COPY = """
import os, signal, sys
from pathlib import Path
from kliko_async.engine.exports import export_step

copied = []


def between_files():
    copied.append(1)
    if len(copied) == 3:  # two files copied, then kill -9
        os.kill(os.getpid(), signal.SIGKILL)


export_step(Path(sys.argv[1]), Path(sys.argv[2]), "s", "k" * 64, between_files=between_files)
"""


def export_killed_mid_copy(source: Path, out: Path) -> int:
    """Export ``source`` as step ``s`` in a process killed with SIGKILL after two files; its
    pid, now of no process."""
    killed = subprocess.Popen([sys.executable, "-c", KILLED_MID_COPY, source, out])
    assert killed.wait(timeout=60) == -signal.SIGKILL
    return killed.pid


async def test_a_half_copy_left_by_an_export_killed_with_sigkill_is_removed_next_time(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for i in range(4):
        (source / f"f{i}").write_text(f"{i}\n")
    out = tmp_path / "out"
    dead = export_killed_mid_copy(source, out)
    (half,) = out.iterdir()
    assert half.name.startswith(".s.kliko-") and half.name.endswith(".exporting")
    assert len(list(half.iterdir())) == 2  # a half copy, hidden, left for good until now
    # Left alone: a live process's copy, another host's, and a link named like a copy.
    live = out / f".t.kliko-{host_name()}-{os.getppid()}-a1.exporting"
    elsewhere = out / f".t.kliko-another-host-{dead}-a2.replaced"
    kept = tmp_path / "kept"
    for folder in (live, elsewhere, kept):
        folder.mkdir()
        (folder / "file").write_text("mine\n")
    link = out / f".t.kliko-{host_name()}-{dead}-a3.exporting"
    link.symlink_to(kept)

    chain = chain_of(tmp_path, s={"image": "example/tool"})
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)

    assert result.ok
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["s", live.name, elsewhere.name, link.name]
    )
    assert (kept / "file").read_text() == "mine\n" and link.is_symlink()
    assert remove_abandoned_copies(out) == []


@pytest.mark.parametrize(
    ("content", "refused"),
    [('{"step": "simulate", "key": "' + "a" * 64 + '"}\n', False), ("my own notes\n", True)],
    ids=["an earlier export's marker", "a file of the step's own"],
)
async def test_a_marker_carried_from_an_export_used_as_data_is_replaced(
    tmp_path: Path, content: str, refused: bool
) -> None:
    """A step that copies its input (an earlier export, given as data) into its output carries
    that export's marker along: the new export replaces it. A file of the step's own by that
    name is still refused, naming it."""

    async def copies_its_input(container: FakeContainer) -> int:
        (container.path("/output") / EXPORT_MARKER).write_text(content)
        (container.path("/output") / "data.txt").write_text("data\n")
        return 0

    fake = FakeRuntime()
    fake.add_image("example/copy", SPLIT_YML, copies_its_input)
    chain = chain_of(tmp_path, s={"image": "example/copy"})
    out = tmp_path / "out"
    if refused:
        with pytest.raises(KlikoError, match=f"holds a file named {EXPORT_MARKER}"):
            await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)
        return
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)
    marker = json.loads((out / "s" / EXPORT_MARKER).read_text())
    assert marker == {"step": "s", "key": result.steps["s"].key}
    assert (out / "s" / "data.txt").read_text() == "data\n"


async def test_an_earlier_export_of_a_step_that_failed_now_is_kept_and_said(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    failing = {"fail": False}

    async def maybe_fail(container: FakeContainer) -> int:
        (container.path("/output") / "x.txt").write_text("1\n")
        return 1 if failing["fail"] else 0

    fake.add_image("example/maybe", "schema_version: 3\nio: split\nsections: []\n", maybe_fail)
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = chain_of(
        tmp_path, s={"image": "example/maybe"}, t={"image": "example/tool", "inputs": ["s"]}
    )
    await api.run(first, runtime=fake, cache_dir=cache, out=out)
    failing["fail"] = True
    events: list[Event] = []

    # Another chain (s's key changes with its env) whose s now fails, and t is skipped.
    again = chain_of(
        tmp_path,
        s={"image": "example/maybe", "env": {"RUN": "2"}},
        t={"image": "example/tool", "inputs": ["s"]},
    )
    result = await api.run(again, runtime=fake, cache_dir=cache, out=out, on_event=events.append)

    assert {n: r.state for n, r in result.steps.items()} == {"s": "failed", "t": "skipped"}
    (finished,) = [e for e in events if isinstance(e, RunFinished)]
    assert finished.stale_outputs == ["s", "t"]
    assert (out / "s" / "x.txt").read_text() == "1\n", "the earlier export is left as it was"
    said = run_message(finished)
    assert said is not None and "--out still holds an earlier run's output of s, t" in said
    summary = [str(line) for line in summary_lines(finished, []) if isinstance(line, Text)]
    assert any("--out still holds an earlier run's output of s, t" in line for line in summary)
