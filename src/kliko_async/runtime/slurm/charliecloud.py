"""Images for Charliecloud nodes: an image of the local engine converted once per image ID for
``ch-run`` (exported, unpacked by ``ch-convert``, its environment kept), in the cache folder that
every node sees."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio

from kliko_async.cache.durable import remove_tree_off_loop
from kliko_async.errors import ContainerError
from kliko_async.runtime.docker import DockerRuntime
from kliko_async.runtime.dockerexport import export_image
from kliko_async.runtime.slurm.commands import command_error, user_name


class CharliecloudImages:
    """Converted images under ``folder``, one conversion at a time per image ID."""

    def __init__(self, folder: Path, docker: DockerRuntime) -> None:
        self.folder = folder
        self._docker = docker
        self._converting: dict[str, anyio.Lock] = {}

    async def converted(self, image_id: str) -> Path:
        """The image converted for ``ch-run``, once per image ID, kept in the cache folder.

        The image's filesystem is exported from the local engine (``docker export`` of a
        created container: no tag is added or removed, so no image can be lost) and unpacked
        by ``ch-convert``; its environment is written where ``ch-run --set-env`` reads it.
        """
        final = self.folder / image_id.removeprefix("sha256:")
        lock = self._converting.setdefault(image_id, anyio.Lock())
        async with lock:
            if final.is_dir():
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}"
            archive = tmp.with_name(tmp.name + ".tar")
            await remove_tree_off_loop(tmp)  # of a process killed while converting
            try:
                image_env = await export_image(self._docker, image_id, archive)
                await self._unpack(archive, tmp, image_id)
                for mount_point in ("input", "output", "work", "param_files", "tmp", "home", "ch"):
                    (tmp / mount_point).mkdir(exist_ok=True)
                (tmp / "parameters.json").touch()
                (tmp / "ch" / "environment").write_text("".join(f"{e}\n" for e in image_env))
                os.rename(tmp, final)  # atomic: a half-converted image is never used
            except BaseException as error:
                await remove_tree_off_loop(tmp)  # shielded: runs even while being cancelled
                if not (isinstance(error, OSError) and final.is_dir()):
                    raise
                # else another process won the rename: its image is as good
            finally:
                archive.unlink(missing_ok=True)
            return final

    async def _unpack(self, archive: Path, target: Path, image_id: str) -> None:
        env = dict(os.environ)
        env.setdefault("USER", user_name())
        try:
            done = await anyio.run_process(
                ["ch-convert", "-i", "tar", "-o", "dir", str(archive), str(target)],
                check=False,
                env=env,
            )
        except OSError as error:
            raise ContainerError(
                f"cannot convert the image for Charliecloud ({error}); install Charliecloud "
                "on this machine, or set engine: docker"
            ) from None
        if done.returncode != 0:
            await remove_tree_off_loop(target)
            raise ContainerError(
                f"ch-convert could not convert image {image_id[:19]}: {command_error(done)}"
            )
