"""A step whose container succeeded but whose entry cannot be published (the cache's disk
fails) fails with the reason, and its log is kept as a failed container's is (issue 19)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.cache.store import Cache
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

SPLIT_YML = "schema_version: 3\nio: split\nsections: []\n"


async def test_a_publish_failing_on_the_disk_keeps_the_steps_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's disk fails while the entry is moved into place: the step fails saying so,
    and its log is kept in the run's log folder as a failed container's is (it was lost)."""

    async def talks(container: FakeContainer) -> int:
        container.log("line one")
        container.log("line two", "stderr")
        (container.path("/output") / "a.txt").write_text("a\n")
        return 0

    fake = FakeRuntime()
    fake.add_image("example/talks", SPLIT_YML, talks)

    def disk_full(self: Cache, staging: object, final: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(Cache, "_rename_into_place", disk_full)
    chain = parse_chain(
        {"steps": {"s": {"image": "example/talks"}}},
        source=str(tmp_path / "chain.yml"),
        base_dir=tmp_path,
    )

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache")

    step = result.steps["s"]
    assert not result.ok and step.state == "failed"
    assert "moving the entry into place failed" in (step.reason or "")
    assert step.log_path is not None and step.log_path.is_file()
    saved = step.log_path.read_text()
    assert "line one" in saved and "line two" in saved
    assert list((tmp_path / "cache" / "tmp").iterdir()) == [], "the rest is discarded"
