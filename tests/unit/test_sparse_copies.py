"""Sparse files stay sparse wherever kliko-async copies them: join IO's /work, exports under
--out and the private copies of file parameters (issue 19). A 64 MiB file with 2 bytes written
takes 8 KiB on disk; copied with ``shutil.copyfile`` it took 64 MiB."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.cache import filecopy
from kliko_async.cache.filecopy import copy_file
from kliko_async.model.chain import parse_chain
from kliko_async.model.parameters import PARAM_FILES_DIR
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

SIZE = 64 << 20
SPARSE_AT_MOST = 1 << 20  # bytes on disk a copy may take (the data is 2 blocks)


def write_sparse(path: Path, size: int = SIZE) -> bytes:
    """A file of ``size`` bytes with one byte at the start, one in the middle and a hole at the
    end; skips the test where this file system keeps no holes."""
    with path.open("wb") as f:
        f.write(b"a")
        f.seek(size // 2)
        f.write(b"b")
        f.truncate(size)
    if on_disk(path) > SPARSE_AT_MOST:
        pytest.skip(f"the file system of {path} keeps no holes")
    return b"a" + bytes(size // 2 - 1) + b"b" + bytes(size - size // 2 - 1)


def on_disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_copy_keeps_the_holes_and_the_bytes(tmp_path: Path) -> None:
    content = write_sparse(tmp_path / "sparse")
    assert copy_file(tmp_path / "sparse", tmp_path / "copy") <= 2 * 4096 * 16
    assert (tmp_path / "copy").read_bytes() == content
    assert on_disk(tmp_path / "copy") <= SPARSE_AT_MOST


@pytest.mark.parametrize("failure", [errno.EXDEV, errno.ENOSYS])
def test_where_the_kernel_cannot_copy_the_bytes_are_read_and_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: int
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(filecopy.os, "copy_file_range", refuse)
    content = write_sparse(tmp_path / "sparse")
    copy_file(tmp_path / "sparse", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == content
    assert on_disk(tmp_path / "copy") <= SPARSE_AT_MOST
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(3 * filecopy.CHUNK + 5))
    copy_file(dense, tmp_path / "dense-copy")
    assert (tmp_path / "dense-copy").read_bytes() == dense.read_bytes()


def test_empty_and_link_sources(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert copy_file(tmp_path / "empty", tmp_path / "copy") == 0
    assert (tmp_path / "copy").read_bytes() == b""
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OSError, match="Too many levels of symbolic links") as raised:
        copy_file(tmp_path / "link", tmp_path / "through-link")
    assert raised.value.errno == errno.ELOOP  # never through a link


SPLIT = "schema_version: 3\nio: split\nsections: []\n"
JOIN = "schema_version: 3\nio: join\nsections: []\n"
WITH_FILE = (
    "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
    "      - {name: data, type: file}\n"
)


async def test_join_io_exports_and_file_parameters_keep_sparse_files_sparse(
    tmp_path: Path,
) -> None:
    content = write_sparse(tmp_path / "given.img")
    seen: dict[str, int] = {}

    async def make(container: FakeContainer) -> int:
        with (container.path("/output") / "image.img").open("wb") as f:
            f.write(b"a")
            f.seek(SIZE // 2)
            f.write(b"b")
            f.truncate(SIZE)
        return 0

    async def look_at_work(container: FakeContainer) -> int:
        seen["work"] = on_disk(container.path("/work") / "image.img")
        return 0

    async def look_at_parameter(container: FakeContainer) -> int:
        (copy,) = (p for p in container.path(PARAM_FILES_DIR).rglob("*") if p.is_file())
        seen["parameter"] = on_disk(copy)
        assert copy.read_bytes() == content
        return 0

    fake = FakeRuntime()
    fake.add_image("make", SPLIT, make)
    fake.add_image("join", JOIN, look_at_work)
    fake.add_image("takes-file", WITH_FILE, look_at_parameter)
    chain = parse_chain(
        {
            "steps": {
                "make": {"image": "make"},
                "join": {"image": "join", "inputs": ["make"]},
                "file": {"image": "takes-file", "params": {"data": str(tmp_path / "given.img")}},
            }
        },
        source=str(tmp_path / "chain.yaml"),
        base_dir=tmp_path,
    )
    out = tmp_path / "out"

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=out)

    assert result.ok, {name: step.reason for name, step in result.steps.items()}
    assert seen == {"work": seen["work"], "parameter": seen["parameter"]}
    assert seen["work"] <= SPARSE_AT_MOST, "join IO's copy in /work"
    # Hashed as it is copied, in 1 MiB pieces: a piece that is all zeros becomes a hole.
    assert seen["parameter"] <= 4 << 20, "the file parameter's private copy"
    for step in ("make", "join"):
        exported = out / step / "image.img"
        assert on_disk(exported) <= SPARSE_AT_MOST, f"the export of {step}"
        assert exported.read_bytes() == content
