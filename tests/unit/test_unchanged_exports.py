"""A cached re-run leaves an export that still holds the same output as it is, and copies again
one that was changed in any way (on the fake runtime; the comparison is lstat's alone)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.engine.exports import EXPORT_MARKER
from kliko_async.engine.samecopy import same_copy
from kliko_async.engine.workspace import copy_tree_writable
from kliko_async.events import Event, OutputExported
from kliko_async.model.chain import Chain, parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

SPLIT_YML = "schema_version: 3\nio: split\nsections:\n  - name: s\n    description: s\n"
SPLIT_YML += "    fields:\n      - {name: n, type: int, initial: 1}\n"


async def write_outputs(container: FakeContainer) -> int:
    out = container.path("/output")
    (out / "image.fits").write_bytes(b"SIMPLE" * 1000)
    (out / "tool.sh").write_text("#!/bin/sh\n")
    (out / "tool.sh").chmod(0o755)
    (out / "sub").mkdir()
    (out / "sub" / "table.txt").write_text("1 2 3\n")
    (out / "latest").symlink_to("image.fits")
    return 0


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/writer", SPLIT_YML, write_outputs)
    return runtime


def chain_of(tmp_path: Path, n: int = 1) -> Chain:
    steps = {"make": {"image": "example/writer", "params": {"n": n}}}
    return parse_chain({"steps": steps}, source=str(tmp_path / "chain.yml"), base_dir=tmp_path)


async def export_twice(
    tmp_path: Path, fake: FakeRuntime, change: Callable[[Path], object], n: int = 1
) -> tuple[OutputExported, Path]:
    """Run and export, ``change`` the export, run again (cached, or with another ``n``): the
    second run's export event, and the export."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    await api.run(chain_of(tmp_path), runtime=fake, cache_dir=cache, out=out)
    change(out / "make")
    events: list[Event] = []
    result = await api.run(
        chain_of(tmp_path, n), runtime=fake, cache_dir=cache, out=out, on_event=events.append
    )
    assert result.ok
    (exported,) = [e for e in events if isinstance(e, OutputExported)]
    return exported, out / "make"


def inode(path: Path) -> int:
    return os.lstat(path).st_ino


async def test_an_unchanged_export_of_a_cached_step_is_left_as_it_is(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    kept: dict[str, int] = {}

    def remember(export: Path) -> None:
        kept.update({p.name: inode(p) for p in export.rglob("*")})

    exported, export = await export_twice(tmp_path, fake, remember)

    assert exported.unchanged
    assert (exported.files, exported.size_bytes) == (3, 6000 + 10 + 6)
    assert {p.name: inode(p) for p in export.rglob("*")} == kept, "nothing was copied again"
    assert fake.started == 1


async def test_an_export_keeps_the_modification_times_of_the_cache_entry(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = await api.run(chain_of(tmp_path), runtime=fake, cache_dir=cache, out=out)
    entry = result.steps["make"].output
    assert entry is not None

    for name in ("image.fits", "tool.sh", "sub/table.txt"):
        assert (out / "make" / name).stat().st_mtime_ns == (entry / name).stat().st_mtime_ns


def append(name: str) -> Callable[[Path], object]:
    def change(export: Path) -> None:
        with (export / name).open("ab") as file:
            file.write(b"edited")

    return change


def rewrite_keeping_size_and_time(export: Path) -> None:
    info = (export / "sub" / "table.txt").stat()
    (export / "sub" / "table.txt").write_text("9 9 9\n")
    os.utime(export / "sub" / "table.txt", ns=(info.st_atime_ns, info.st_mtime_ns + 1))


CHANGES: dict[str, Callable[[Path], object]] = {
    "a file written": append("image.fits"),
    "a file rewritten, same size, its time a nanosecond apart": rewrite_keeping_size_and_time,
    "a file added": lambda export: (export / "notes.txt").write_text("mine"),
    "a file removed": lambda export: (export / "sub" / "table.txt").unlink(),
    "a file made executable": lambda export: (export / "image.fits").chmod(0o755),
    "a link pointed elsewhere": lambda export: (
        (export / "latest").unlink(),
        (export / "latest").symlink_to("tool.sh"),
    ),
    "a file put in place of a link": lambda export: (
        (export / "latest").unlink(),
        (export / "latest").write_text("x"),
    ),
    "the marker edited": lambda export: (export / EXPORT_MARKER).write_text("{}"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
async def test_an_export_changed_in_any_way_is_copied_again(
    tmp_path: Path, fake: FakeRuntime, change: Callable[[Path], object]
) -> None:
    exported, export = await export_twice(tmp_path, fake, change)

    assert not exported.unchanged
    assert (export / "image.fits").read_bytes() == b"SIMPLE" * 1000
    assert (export / "sub" / "table.txt").read_text() == "1 2 3\n"
    assert os.readlink(export / "latest") == "image.fits"
    assert sorted(p.name for p in export.iterdir()) == sorted(
        [EXPORT_MARKER, "image.fits", "latest", "sub", "tool.sh"]
    )


async def test_the_export_of_another_output_is_replaced(tmp_path: Path, fake: FakeRuntime) -> None:
    exported, _ = await export_twice(tmp_path, fake, lambda export: None, n=2)

    assert not exported.unchanged
    assert fake.started == 2


def test_same_copy_compares_folders_modes_and_never_follows_links(tmp_path: Path) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "f").write_text("x")
    (source / "a" / "b" / "f").chmod(0o400)  # read-only in the entry, writable in the copy
    (source / "outside").symlink_to("/etc")
    copy_tree_writable(source, copy, keep_times=True)

    assert same_copy(source, copy, besides=EXPORT_MARKER) == (1, 1)
    assert stat.S_IMODE((copy / "a" / "b" / "f").stat().st_mode) == 0o600

    (copy / "a").chmod(0o700 | 0o077)  # a folder opened to everyone
    assert same_copy(source, copy, besides=EXPORT_MARKER) is None
    assert same_copy(source, tmp_path / "absent", besides=EXPORT_MARKER) is None
