"""Following a container's log through the Docker Engine: a stream that ends while the container
runs on is followed again, and the end of the container ends the follow at once. (The engine
side, streams cut and an engine killed, is in tests/integration/test_engine_faults.py.)"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from kliko_async.runtime.base import Stream
from kliko_async.runtime.dockerlogs import FOLLOW_AGAIN_SECONDS, LogFollower, LogReader

pytestmark = pytest.mark.anyio


def frame(text: str) -> tuple[int, bytes]:
    return 1, b"2026-12-05T05:00:00.000000000Z " + text.encode() + b"\n"


class EndingEarly(LogFollower):
    """A follower whose engine ends each followed stream after one new frame, as an engine may
    while the container runs on; ``reads`` counts the follows."""

    def __init__(self, reader: LogReader, frames: list[tuple[int, bytes]]) -> None:
        super().__init__(None, "c0ffee", reader)  # type: ignore[arg-type]  # no engine needed
        self.frames = frames
        self.reads = 0

    async def _read(self, extra: dict[str, Any]) -> None:
        self.reads += 1
        skip = self._reader.position
        if skip < len(self.frames):
            self._reader.feed(*self.frames[skip])


async def test_a_follow_that_ends_while_the_container_runs_is_followed_again() -> None:
    lines: list[str] = []
    both = anyio.Event()

    def on_log(stream: Stream, text: str, at: str | None = None, /) -> None:
        lines.append(text)
        if len(lines) == 2:
            both.set()

    follower = EndingEarly(LogReader(on_log), [frame("held"), frame("still working")])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower.follow)
            await both.wait()  # the second line comes by a second follow, not at the end
            follower.stop()
    assert lines == ["held", "still working"]
    assert follower.reads >= 2


async def test_the_containers_end_ends_a_pausing_follow_at_once() -> None:
    follower = EndingEarly(LogReader(lambda *line: None), [frame("done")])
    async with anyio.create_task_group() as tg:
        tg.start_soon(follower.follow)
        await anyio.sleep(0.05)  # the stream ended; the follow pauses before following again
        started = anyio.current_time()
        follower.stop()
    assert anyio.current_time() - started < FOLLOW_AGAIN_SECONDS / 2
    assert follower.reads == 1
