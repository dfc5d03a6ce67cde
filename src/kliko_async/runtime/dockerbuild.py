"""Building an image from a ``build:`` folder through the engine's build stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiodocker

from kliko_async.errors import ImageError
from kliko_async.runtime.buildcontext import CONTEXT_ENCODING, ContextArchive

BUILD_TAIL_LINES = 10
"""A failed build's error carries this many of its last output lines."""


async def stream_build(
    client: aiodocker.Docker,
    context: Path,
    archive: ContextArchive,
    *,
    tag: str | None = None,
    on_log: Callable[[str], None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str | None:
    """Build ``archive`` (the folder ``context``, packed), each output line to ``on_log``; the
    image ID the engine reported, if any. A failed build raises ImageError with its last lines;
    the engine's connection errors pass through."""
    image_id: str | None = None
    output: list[str] = []
    try:
        stream: Any = client.images.build(
            fileobj=archive,
            encoding=CONTEXT_ENCODING,
            tag=tag,
            rm=True,
            forcerm=True,
            stream=True,
            labels=dict(labels or {}),
        )
        async for item in stream:
            text = str(item.get("stream", "")).rstrip("\n")
            if text:
                output.append(text)
                if on_log:
                    on_log(text)
            aux = item.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
            if "error" in item:
                raise aiodocker.DockerError(500, str(item["error"]))
    except aiodocker.DockerError as exc:
        tail = "\n".join(output[-BUILD_TAIL_LINES:])
        raise ImageError(
            f"the build failed: {exc.message.strip()}" + (f"\n{tail}" if tail else ""),
            where=f"build '{context}'",
        ) from None
    return image_id
