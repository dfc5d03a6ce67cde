"""A step gives its job slot back when its container has ended well, before its publish: the
next step's container starts meanwhile, and the steps publishing at once share one barrier."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kliko_async import api
from kliko_async.cache.entry import Manifest, Staging
from kliko_async.cache.sealing import Sealed
from kliko_async.cache.store import Cache
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

KLIKO_YML = (
    "schema_version: 3\nio: split\nsections:\n  - {name: m, fields: [{name: n, type: str}]}\n"
)


def test_the_next_container_starts_while_a_step_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second_started = threading.Event()
    publishing: list[str] = []
    ran_meanwhile: list[bool] = []
    original = Cache.publish_many

    def slow_publish(
        self: Cache, staged: Sequence[tuple[Staging, Manifest] | Sealed]
    ) -> list[object]:
        names = [i.entry.manifest.step if isinstance(i, Sealed) else i[1].step for i in staged]
        publishing.extend(names)
        if "first" in names:  # held until the other step's container ran (at most 10 s)
            ran_meanwhile.append(second_started.wait(10))
        return original(self, staged)  # type: ignore[return-value]

    monkeypatch.setattr(Cache, "publish_many", slow_publish)

    async def program(container: FakeContainer) -> int:
        if "second" in container.path("/parameters.json").read_text():
            second_started.set()
        (container.path("/output") / "out.txt").write_text("ok\n")
        return 0

    runtime = FakeRuntime()
    runtime.add_image("x/step", KLIKO_YML, program)
    steps = {"first": {"image": "x/step", "params": {"n": "first"}}}
    steps["second"] = {"image": "x/step", "params": {"n": "second"}}
    chain = parse_chain({"steps": steps}, source="c", base_dir=tmp_path)
    result = anyio.run(
        lambda: api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache", jobs=1)
    )
    assert result.ok and result.count("done") == 2
    assert publishing[0] == "first"
    assert ran_meanwhile == [True], "the second container waited for the first's publish"
