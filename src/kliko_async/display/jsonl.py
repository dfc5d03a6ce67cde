"""``--json``: one JSON object per event per line, the same models, for other programs."""

from __future__ import annotations

from typing import TextIO

from kliko_async.events import Event


class JsonLinesDisplay:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        self._stream.write(event.model_dump_json() + "\n")
        if event.kind != "log_line":
            self._stream.flush()

    def flush(self) -> None:
        """Log lines go out here, once per batch of events (see ``EventConsumer``)."""
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
