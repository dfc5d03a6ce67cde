"""Under trio: the engine (anyio only) runs on any backend; the Docker runtime, built on
aiodocker, needs asyncio, so asking for it from trio fails at once with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.errors import KlikoError
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytest.importorskip("trio")  # a dev extra
pytestmark = pytest.mark.anyio

KLIKO_YML = "schema_version: 3\nio: split\nsections: []\n"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def write(container: FakeContainer) -> int:
    (container.path("/output") / "made.txt").write_text("made\n")
    return 0


async def test_under_trio_a_run_on_the_docker_engine_fails_at_once_saying_asyncio_is_needed(
    tmp_path: Path,
) -> None:
    chain = parse_chain({"steps": {"a": {"image": "busybox"}}}, source="c.yml", base_dir=tmp_path)
    with pytest.raises(KlikoError) as raised:
        await api.run(chain, cache_dir=tmp_path / "cache")
    assert "needs an asyncio event loop" in str(raised.value)
    assert "backend='asyncio'" in str(raised.value)
    assert not (tmp_path / "cache").exists(), "refused before anything was touched"
    with pytest.raises(KlikoError, match="needs an asyncio event loop"):
        await api.read_image("busybox", cache_dir=tmp_path / "cache")


async def test_under_trio_the_engine_runs_a_chain_on_a_runtime_that_supports_it(
    tmp_path: Path,
) -> None:
    fake = FakeRuntime()
    fake.add_image("w", KLIKO_YML, write)
    steps = {"a": {"image": "w"}, "b": {"image": "w", "inputs": ["a"]}}
    chain = parse_chain({"steps": steps}, source="c.yml", base_dir=tmp_path)

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=tmp_path / "o")

    assert result.ok
    assert (tmp_path / "o" / "b" / "made.txt").read_text() == "made\n"
