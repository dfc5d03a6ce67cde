"""The kliko.yml memo under ``<cache>/specs``: written atomically and durably, trusted only when
it is whole; a memo that is unreadable, truncated or altered is read from the image again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kliko_async.engine.images import ImageResolver
from kliko_async.runtime.fake import FakeRuntime

pytestmark = pytest.mark.anyio

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: first, type: int, initial: 1}
      - {name: second, type: str, initial: two}
"""


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/two", KLIKO_YML)
    return runtime


def memo_of(specs: Path) -> Path:
    (memo,) = specs.glob("*.kliko.yml")
    return memo


async def fields_of(fake: FakeRuntime, specs: Path) -> list[str]:
    image = await ImageResolver(fake, specs).resolve("example/two")
    return list(image.spec.fields())


async def test_the_memo_saves_reading_the_image_again(fake: FakeRuntime, tmp_path: Path) -> None:
    assert await fields_of(fake, tmp_path) == ["first", "second"]
    assert await fields_of(fake, tmp_path) == ["first", "second"]

    assert fake.probes == 1
    assert os.listdir(tmp_path) == [memo_of(tmp_path).name], "no temporary left"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda memo: memo.write_bytes(memo.read_bytes()[:-40]), id="truncated"),
        pytest.param(lambda memo: memo.write_bytes(b""), id="empty"),
        pytest.param(
            lambda memo: memo.write_bytes(memo.read_bytes().replace(b"two", b"TWO")), id="altered"
        ),
        pytest.param(lambda memo: (memo.unlink(), memo.mkdir()), id="unreadable"),
    ],
)
async def test_a_damaged_memo_is_read_from_the_image_again(
    fake: FakeRuntime, tmp_path: Path, damage: object
) -> None:
    await fields_of(fake, tmp_path)
    damage(memo_of(tmp_path))  # type: ignore[operator]

    assert await fields_of(fake, tmp_path) == ["first", "second"], "not an error, nor wrong"
    assert fake.probes == 2


async def test_a_truncated_memo_is_rewritten_whole(fake: FakeRuntime, tmp_path: Path) -> None:
    await fields_of(fake, tmp_path)
    memo = memo_of(tmp_path)
    memo.write_bytes(memo.read_bytes()[:-40])

    await fields_of(fake, tmp_path)
    await fields_of(fake, tmp_path)

    assert fake.probes == 2, "read again once, then remembered again"


async def test_the_memo_is_fsynced_before_it_is_renamed_into_place(
    fake: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )

    await fields_of(fake, tmp_path)

    assert calls[:2] == ["fsync", "replace"]
    assert "fsync" in calls[2:], "and its folder after the rename"


async def test_a_crash_before_the_rename_leaves_no_memo(
    fake: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(a: object, b: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)

    assert await fields_of(fake, tmp_path) == ["first", "second"]
    assert os.listdir(tmp_path) == [], "neither a partial memo nor its temporary file"
