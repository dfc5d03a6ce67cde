"""An image's filesystem exported from the Docker Engine into a tar archive (``docker export`` of a
created container: no tag is added or removed, so no image can be lost), for runtimes that run
images without an engine (Charliecloud)."""

from __future__ import annotations

from pathlib import Path

import aiodocker
import aiohttp
import anyio

from kliko_async.errors import ContainerError
from kliko_async.runtime.docker import DockerRuntime
from kliko_async.runtime.dockerfiles import probe_config
from kliko_async.runtime.dockerlogs import engine_response

REMOVE_DEADLINE_SECONDS = 30
"""How long removing the exported container may take, even while being cancelled."""


async def export_image(docker: DockerRuntime, image_id: str, archive: Path) -> list[str]:
    """Write the image's filesystem to ``archive``; the image's environment (KEY=VALUE)."""
    client = docker.client
    try:
        info = await client.images.inspect(image_id)
        container = await client.containers.create(probe_config(image_id))
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
        raise ContainerError(f"cannot export image {image_id[:19]}: {error}") from None
    try:
        async with (
            engine_response(
                client, f"containers/{container.id}/export", method="GET", timeout=None
            ) as response,
            await anyio.open_file(archive, "wb") as handle,
        ):
            async for chunk in response.content.iter_chunked(1 << 20):
                await handle.write(chunk)
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
        raise ContainerError(f"cannot export image {image_id[:19]}: {error}") from None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(REMOVE_DEADLINE_SECONDS):
            await docker.remove_container(container.id)
    return [str(e) for e in (info.get("Config") or {}).get("Env") or []]
