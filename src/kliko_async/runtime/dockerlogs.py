"""What the Docker Engine streams about a container: its log (frames in, lines out, none twice,
none lost) and the events of its end (was it killed?).

Also the one way this package reads a reply from the engine (:func:`engine_response`): aiodocker's
``_query`` hands over the response and never releases it, and every response not released holds
one of the connection pool's connections (aiohttp's pool holds 100) for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
import anyio

from kliko_async.runtime.base import LineSplitter, LogSink, Stream

PIECE = 16 * 1024
"""The engine cuts a line longer than this into pieces of exactly this many bytes."""

EVENTS_DEADLINE_SECONDS = 5
"""How long reading the engine's events of a failed container (was it killed?) may take."""

FOLLOW_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""The pauses before following a log again whose stream broke (the last one repeats)."""

FOLLOW_AGAIN_SECONDS = 1.0
"""The least pause before following again a log whose stream ended cleanly while the container
was not known to have ended: as a rule the wait says, well within it, that it did."""

_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}


@contextlib.asynccontextmanager
async def engine_response(
    client: aiodocker.Docker, path: str, **query: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The engine's reply to one request (``_query``'s arguments), released when the block ends.

    A reply read to its end gives its connection back to the pool; one left unread (a stream
    of events or of a log that is still going) closes it, as no later request may read its rest.
    """
    async with client._query(path, **query) as response:
        try:
            yield response
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()


class LogReader:
    """Turns log frames (``<time stamp> <bytes>``) into lines for a sink, stream by stream.

    ``position`` counts the frames taken: a reader whose stream broke resumes after them. Not by
    content: the pieces of one long line carry one time stamp and are often equal.

    Docker 20.10's ``local`` log driver drops the newline after a line longer than 16 KiB: such
    a line arrives as pieces of exactly :data:`PIECE` bytes, all with one time stamp, then a
    shorter (perhaps empty) last piece with that time stamp and no newline. The line ends there,
    so the newline is put back. (A last line that the container never ended reads back the
    same: a saved log gives every line its newline.)
    """

    def __init__(self, on_log: LogSink) -> None:
        self._on_log = on_log
        self._splitters: dict[Stream, LineSplitter] = {
            "stdout": LineSplitter(),
            "stderr": LineSplitter(),
        }
        self._stamps: dict[Stream, str] = {}
        self._piece_stamp: dict[Stream, bytes | None] = {"stdout": None, "stderr": None}
        self.position = 0
        self.last: tuple[int, bytes] | None = None

    def feed(self, kind: int, payload: bytes) -> None:
        self.position += 1
        self.last = (kind, payload)
        stream: Stream = _STREAMS.get(kind, "stdout")
        stamp, _, data = payload.partition(b" ")
        piece_of = self._piece_stamp[stream]
        self._piece_stamp[stream] = None
        if not data.endswith(b"\n"):
            if len(data) == PIECE:
                self._piece_stamp[stream] = stamp
            elif piece_of == stamp:
                data += b"\n"
        self._stamps[stream] = at = stamp.decode("ascii", "replace")
        for line in self._splitters[stream].feed(data):
            self._on_log(stream, line, at)

    def flush(self) -> None:
        for stream, splitter in self._splitters.items():
            for line in splitter.flush():
                self._on_log(stream, line, self._stamps.get(stream))


class LogFollower:
    """Follows one container's log into a :class:`LogReader`, and catches up once it ended.

    :meth:`follow` never raises: a broken stream, or one that ended while the container was not
    known to have ended, is followed again (after a pause) from the position reached, until
    :meth:`stop` is called; :meth:`catch_up` then fetches whatever the
    follow missed (Docker 20.10 ends a followed stream when the container exits, before its
    last lines were sent).
    """

    def __init__(self, client: aiodocker.Docker, container_id: str, reader: LogReader) -> None:
        self._client = client
        self._path = f"containers/{container_id}/logs"
        self._reader = reader
        self._stopped = anyio.Event()

    def stop(self) -> None:
        """The container has ended: a stream that ends or breaks from now on is not followed
        again (and a pause before following again ends at once)."""
        self._stopped.set()

    async def follow(self) -> None:
        pauses = iter(FOLLOW_RETRY_SECONDS)
        pause = FOLLOW_RETRY_SECONDS[0]
        while not self._stopped.is_set():
            position = self._reader.position
            ended = False
            try:
                await self._read({"follow": 1, "tail": "all"})
                # The stream ended: as a rule because the container did, which the wait says
                # in a moment. An engine may also end a follow early while the container runs
                # on; its later lines would then wait for the catch-up at its end.
                ended = True
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return  # the container is gone; the caller finds out why
            except (aiohttp.ClientError, OSError, ValueError):
                pass
            if self._reader.position > position:  # it got somewhere: start the pauses afresh
                pauses = iter(FOLLOW_RETRY_SECONDS)
            pause = next(pauses, pause)
            with anyio.move_on_after(max(pause, FOLLOW_AGAIN_SECONDS) if ended else pause):
                await self._stopped.wait()

    async def catch_up(self) -> None:
        """Deliver the frames that the follow missed, if any."""
        reader = self._reader
        if reader.position > 0:  # the usual case, at the price of one frame: nothing missed
            last = await self._frames({"tail": "1"})
            if last == [reader.last]:
                return
        await self._read({"tail": "all"})

    async def _read(self, extra: dict[str, Any]) -> None:
        """Read the log from its start, feeding the frames past the reader's position."""
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, **extra}
        skip = self._reader.position
        async with engine_response(
            self._client, self._path, method="GET", params=params, timeout=None
        ) as response:
            while (frame := await read_frame(response.content)) is not None:
                if skip:
                    skip -= 1
                else:
                    self._reader.feed(*frame)

    async def _frames(self, extra: dict[str, Any]) -> list[tuple[int, bytes]]:
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, **extra}
        frames: list[tuple[int, bytes]] = []
        async with engine_response(self._client, self._path, method="GET", params=params) as reply:
            while (frame := await read_frame(reply.content)) is not None:
                frames.append(frame)
        return frames


async def ending_events(
    client: aiodocker.Docker, container_id: str, started_at: str
) -> dict[str, str]:
    """The engine's 'kill' (as the signal sent) and 'oom' events of an ended container.

    The engine replays past events from memory up to the container's 'die'; a busy engine
    may have dropped them, hence the deadline.
    """
    found: dict[str, str] = {}
    try:
        since = int(datetime.fromisoformat(started_at).timestamp()) - 1
    except ValueError:
        since = 0
    filters = {"container": [container_id], "event": ["kill", "oom", "die"]}
    params = {"since": str(max(since, 0)), "filters": json.dumps(filters)}
    with anyio.move_on_after(EVENTS_DEADLINE_SECONDS):
        try:
            async with engine_response(
                client, "events", method="GET", params=params, timeout=None
            ) as response:
                async for line in response.content:
                    event = json.loads(line) if line.strip() else {}
                    action = event.get("Action") or event.get("status")
                    if action == "die":
                        break
                    if action == "kill":
                        actor = event.get("Actor") or {}
                        number = (actor.get("Attributes") or {}).get("signal")
                        found["kill"] = _signal_name(number)
                    elif action == "oom":
                        found["oom"] = "oom"
        except (aiohttp.ClientError, aiodocker.DockerError, OSError, ValueError):
            pass  # only the explanation of a failure is lost, not the failure
    return found


def _signal_name(number: object) -> str:
    try:
        return signal.Signals(int(str(number))).name
    except ValueError:
        return f"signal {number}"


async def read_frame(content: aiohttp.StreamReader) -> tuple[int, bytes] | None:
    """One frame of a multiplexed log stream: (stream number, payload); None at its end.

    A stream that stops within a frame broke (the engine ends one only between frames).
    """
    try:
        header = await content.readexactly(8)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise aiohttp.ClientPayloadError("the log stream broke within a frame") from None
        return None
    kind, length = header[0], int.from_bytes(header[4:8], "big")
    try:
        return kind, (await content.readexactly(length) if length else b"")
    except asyncio.IncompleteReadError:
        raise aiohttp.ClientPayloadError("the log stream broke within a frame") from None
