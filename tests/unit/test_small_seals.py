"""Small staging folders are sealed in the event loop, where they are published; big ones in
the group commit's worker thread. A thread making a few dozen small file calls beside the
loop's own passes the GIL to and fro at each, which cost the 10,000-step scheduler benchmark
about 40% of its run; what is published is the same either way."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from kliko_async import api
from kliko_async.cache import groupcommit, sealing
from kliko_async.cache.durable import small_tree
from kliko_async.cache.entry import Manifest, Staging
from kliko_async.cache.key import KeyIngredients
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import verify
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: files, type: int}
      - {name: size, type: int}
      - {name: log_lines, type: int, initial: 1}
"""


async def write_files(container: FakeContainer) -> int:
    """``files`` files of ``size`` bytes each, and ``log_lines`` lines of log."""
    params = json.loads(container.path("/parameters.json").read_text())
    for i in range(params["files"]):
        (container.path("/output") / f"f{i}").write_bytes(b"x" * params["size"])
    for i in range(params["log_lines"]):
        container.log(f"line {i} " + "y" * 100)
    return 0


def test_small_tree_stops_at_its_bounds(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for i in range(5):
        (tmp_path / "sub" / f"f{i}").write_bytes(b"z" * 100)
    (tmp_path / "link").symlink_to("/dev/zero")  # never followed: counts, but has no size
    assert small_tree(tmp_path, max_entries=7, max_bytes=500)
    assert not small_tree(tmp_path, max_entries=6, max_bytes=500)
    assert not small_tree(tmp_path, max_entries=7, max_bytes=499)


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"files": 3, "size": 10}, "loop"),
        ({"files": sealing.SMALL_FILES + 1, "size": 10}, "thread"),
        ({"files": 2, "size": sealing.SMALL_BYTES // 2 + 1}, "thread"),
        ({"files": 1, "size": 10, "log_lines": 12_000}, "thread"),  # a log of 1.3 MB
    ],
    ids=["small", "many-files", "many-bytes", "big-log"],
)
def test_where_a_staging_folder_is_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: dict[str, int], where: str
) -> None:
    sealed_in: list[str] = []
    seal = sealing.seal_staging_files

    def watched(staging: Staging, manifest: Manifest, barrier: object) -> Manifest:
        main = threading.current_thread() is threading.main_thread()
        sealed_in.append("loop" if main else "thread")
        return seal(staging, manifest, barrier)  # type: ignore[arg-type]

    monkeypatch.setattr("kliko_async.cache.store.seal_staging_files", watched)
    runtime = FakeRuntime()
    runtime.add_image("x/files", KLIKO_YML, write_files)
    chain = parse_chain(
        {"steps": {"s": {"image": "x/files", "params": params}}}, source="c", base_dir=tmp_path
    )
    cache_dir = tmp_path / "cache"
    result = anyio.run(lambda: api.run(chain, runtime=runtime, cache_dir=cache_dir, out=None))

    assert result.ok
    assert sealed_in == [where]
    (entry,) = Cache(cache_dir).entries()
    assert len(entry.manifest.outputs) == params["files"]
    assert entry.manifest.log_sha256 is not None
    assert verify(Cache(cache_dir)) == [], "hashes, modes and manifest as cache verify wants"


def test_a_key_published_meanwhile_is_taken_and_the_staging_folder_dropped(
    tmp_path: Path,
) -> None:
    """Sealed in the loop, then found published by another process at its rename: the other
    entry stands, this staging folder goes."""
    cache = Cache(tmp_path / "cache")
    cache.ensure_writable()
    key = "k" * 64
    manifest = Manifest(
        key=key,
        step="s",
        image="x/files",
        ingredients=KeyIngredients(
            image_id="sha256:" + "1" * 64,
            command=("/kliko",),
            io="split",
            parameters={},
            file_hashes={},
            inputs={},
            input_layout="whole",
        ),
        run_id="r",
        started_at=datetime(2026, 12, 5, tzinfo=UTC),
        finished_at=datetime(2026, 12, 5, tzinfo=UTC),
        duration_s=1.0,
        exit_code=0,
    )
    first, second = cache.stage(key), cache.stage(key)
    (first.output_dir / "a").write_text("first")
    (second.output_dir / "a").write_text("second")
    sealed = cache.seal_small(second, manifest)
    published = cache.publish(first, manifest)

    assert sealed is not None
    (outcome,) = cache.publish_many([sealed])

    assert outcome == published
    assert not second.path.exists()
    assert (published.output_dir / "a").read_text() == "first"


def test_a_slow_file_system_stops_sealing_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three seals in a row in the loop that took longer than SEAL_HERE_S (a network file
    system, not a pause of the garbage collector): every later one of the run goes to the
    worker thread, so the loop is held thrice, briefly."""
    sealed_in: list[str] = []
    seal = sealing.seal_staging_files

    def slow(staging: Staging, manifest: Manifest, barrier: object) -> Manifest:
        main = threading.current_thread() is threading.main_thread()
        sealed_in.append("loop" if main else "thread")
        time.sleep(groupcommit.SEAL_HERE_S * 2)
        return seal(staging, manifest, barrier)  # type: ignore[arg-type]

    monkeypatch.setattr("kliko_async.cache.store.seal_staging_files", slow)
    runtime = FakeRuntime()
    runtime.add_image("x/files", KLIKO_YML, write_files)
    steps = {f"s{i}": {"image": "x/files", "params": {"files": 1, "size": i + 1}} for i in range(5)}
    for i in range(1, 5):
        steps[f"s{i}"]["inputs"] = [f"s{i - 1}"]  # one after another
    chain = parse_chain({"steps": steps}, source="c", base_dir=tmp_path)
    cache_dir = tmp_path / "cache"
    result = anyio.run(lambda: api.run(chain, runtime=runtime, cache_dir=cache_dir, out=None))

    assert result.ok
    assert sealed_in == ["loop", "loop", "loop", "thread", "thread"]


def test_an_output_that_cannot_be_looked_at_fails_its_step_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container that made its output unreadable (root reads anything, so the look is made
    to fail here): the step fails with the cache's reason, and the run goes on to its end."""

    def unreadable(root: Path, **bounds: int) -> bool:
        raise PermissionError(13, "Permission denied", str(root))

    def seal_fails(staging: Staging, manifest: Manifest, barrier: object) -> Manifest:
        raise sealing.SealingFailed("sealing the output") from PermissionError(
            13, "Permission denied", str(staging.output_dir)
        )

    monkeypatch.setattr(sealing, "small_tree", unreadable)
    monkeypatch.setattr("kliko_async.cache.store.seal_staging_files", seal_fails)
    runtime = FakeRuntime()
    runtime.add_image("x/files", KLIKO_YML, write_files)
    chain = parse_chain(
        {"steps": {"s": {"image": "x/files", "params": {"files": 1, "size": 1}}}},
        source="c",
        base_dir=tmp_path,
    )
    result = anyio.run(
        lambda: api.run(
            chain, runtime=runtime, cache_dir=tmp_path / "cache", out=None, keep_going=True
        )
    )
    assert result.steps["s"].state == "failed"
    assert "sealing the output failed" in (result.steps["s"].reason or "")
