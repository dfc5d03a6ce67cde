"""Lay out the host folders one Kliko container sees, and describe its job for a runtime.

Split IO: ``/input`` (read-only; one input at ``/input``, several at ``/input/<step>/``) and
``/output``. Join IO: ``/work``, pre-filled with a *copy* of the inputs (one subfolder per input
when there are several), so a later step can never change a cached result. Always:
``/parameters.json`` and, for file parameters, ``/param_files/`` (both read-only).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from kliko_async.cache.durable import special_kind, write_all
from kliko_async.cache.filecopy import COPY_FILE_BITS, COPY_FOLDER_BITS, copy_file
from kliko_async.cache.treewalk import walk
from kliko_async.engine.images import KLIKO_COMMAND, KlikoImage
from kliko_async.model.parameters import PARAM_FILES_DIR, ValidatedParameters
from kliko_async.runtime.base import ContainerJob, Mount

PARAMETERS_FILE = "parameters.json"
EMPTY_INPUT = "empty-input"
"""In a step's scratch folder: its parameters, and the empty folder that is /input of a step
without inputs."""


def folder_problem(folder: Path, consequence: str) -> str | None:
    """Why this process cannot write in ``folder`` (created if missing), said of the part of its
    path that stops it and followed by ``consequence`` ("so ... cannot be written there"); None
    if it can. Checked before a container runs, so that its work is not lost after it: a file
    where a folder is wanted, a part of the path that cannot be looked at (a name too long, a
    folder not searchable), or the nearest existing folder not writable (read-only, not yours).
    """
    existing = folder
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        is_folder = existing.is_dir()
    except OSError as error:
        return f"cannot look at {error.filename or existing}: {error.strerror or error}"
    if not is_folder:
        return f"{existing} is not a folder, {consequence}"
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        return f"{existing} is not writable ({reason}), {consequence}"
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def absolute(path: Path) -> Path:
    """``path`` made absolute and normalised without touching the disk (Docker wants both)."""
    # pathlib dropped "." and "//" already; a ".." is in the text as "/.." (a name that only
    # starts with ".." goes the long way, to the same result). The text is kept by the path:
    # cheaper than its parts, which are a new tuple each time.
    if path.is_absolute() and "/.." not in str(path):
        return path  # (the cache's own paths: no new Path for each of a step's mounts)
    return Path(os.path.abspath(path))


def invoking_user() -> str:
    """``uid:gid`` of this process: containers run as it, so outputs are not owned by root."""
    return f"{os.getuid()}:{os.getgid()}"


def build_job(
    image: KlikoImage,
    params: ValidatedParameters,
    *,
    scratch: Path,
    output: Path,
    inputs: Mapping[str, Path],
    inputs_in_folders: bool = False,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    cpus: float | None = None,
    memory: int | None = None,
    gpus: int | None = None,
    timeout: float | None = None,
    between_files: Callable[[], None] | None = None,
) -> ContainerJob:
    """Write parameters into ``scratch``, prepare ``output`` and return the container's job.

    ``output``, an existing folder (a staging folder comes with its ``output/``), becomes
    ``/output`` (split IO) or ``/work`` (join IO). ``inputs`` maps input
    names to host folders; for join IO they are copied into ``output`` first. One input is the
    whole of /input (or /work) unless ``inputs_in_folders`` (a consumer of a matrix step).
    ``between_files`` is called while that copy goes on (see :func:`fill_work`).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    mounts = parameter_mounts(params, scratch)
    if image.spec.io == "split":
        mounts += split_input_mounts(inputs, scratch, in_folders=inputs_in_folders)
        mounts.append(Mount(source=absolute(output), target="/output"))
    else:
        fill_work(output, inputs, in_folders=inputs_in_folders, between_files=between_files)
        mounts.append(Mount(source=absolute(output), target="/work"))
    run_as = user or invoking_user()
    # A different uid writes its outputs by owning them while it runs (never by opening them
    # to everyone), and we must be able to seal or delete what it wrote afterwards.
    lend = bool(user) and user != invoking_user()
    owner = invoking_user() if lend and os.geteuid() != 0 else None
    return ContainerJob(
        image=image.id,
        command=KLIKO_COMMAND,
        mounts=tuple(mounts),
        env=dict(env or {}),
        user=run_as,
        labels=dict(labels or {}),
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        timeout=timeout,
        owner=owner,
        lend_mounts=lend,
    )


def parameter_mounts(params: ValidatedParameters, scratch: Path) -> list[Mount]:
    """Write /parameters.json and copy file parameters; return their read-only mounts.

    Files already copied at planning (``params.files_root``) are mounted as they are: those
    very copies were hashed into the step's key.
    """
    parameters = scratch / PARAMETERS_FILE
    fd = os.open(parameters, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, params.parameters_json().encode())
        os.fchmod(fd, 0o644)  # whatever the umask: the container's user reads it
    finally:
        os.close(fd)
    mounts = [Mount(source=absolute(parameters), target="/parameters.json", read_only=True)]
    if params.files_root is not None:
        mounts.append(
            Mount(source=absolute(params.files_root), target=PARAM_FILES_DIR, read_only=True)
        )
    elif params.files:
        root = scratch / "param_files"
        for item in params.files:
            rel = Path(item.container_path).relative_to(PARAM_FILES_DIR)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            copy_file(item.host_path, root / rel)
        readable_by_anyone(root)
        mounts.append(Mount(source=absolute(root), target=PARAM_FILES_DIR, read_only=True))
    return mounts


def remove_scratch(scratch: Path) -> bool:
    """Delete a scratch folder that holds what :func:`build_job` put there for a step without
    file parameters (parameters.json and perhaps the empty /input) in as few calls as that
    takes, without listing it; False, with the rest left, when it holds anything else."""
    try:
        os.unlink(f"{scratch}/{PARAMETERS_FILE}")
        try:
            os.rmdir(scratch)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            os.rmdir(f"{scratch}/{EMPTY_INPUT}")
            os.rmdir(scratch)
    except OSError:
        return False
    return True


def each_in_a_folder(count: int, *, in_folders: bool = False) -> bool:
    """Whether ``count`` inputs are each in a folder named after its step (/input/<step>/ or
    /work/<step>/) rather than one being all of /input (or /work): several are, and so is a
    lone one ``in_folders`` (a consumer of a matrix step). The key names inputs the same way."""
    return count > 1 or (count == 1 and in_folders)


def split_input_mounts(
    inputs: Mapping[str, Path], scratch: Path, *, in_folders: bool = False
) -> list[Mount]:
    if not inputs:
        empty = scratch / EMPTY_INPUT
        empty.mkdir(exist_ok=True)
        return [Mount(source=absolute(empty), target="/input", read_only=True)]
    if not each_in_a_folder(len(inputs), in_folders=in_folders):
        (source,) = inputs.values()
        return [_input_mount(source, "/input")]
    return [_input_mount(source, f"/input/{name}") for name, source in sorted(inputs.items())]


def _input_mount(source: Path, folder: str) -> Mount:
    """``source`` read-only at ``folder``; a file (data) goes into it under its own name."""
    if source.is_file():
        return Mount(source=absolute(source), target=f"{folder}/{source.name}", read_only=True)
    return Mount(source=absolute(source), target=folder, read_only=True)


def fill_work(
    work: Path,
    inputs: Mapping[str, Path],
    *,
    in_folders: bool = False,
    between_files: Callable[[], None] | None = None,
) -> None:
    """Copy the inputs into ``work``. ``between_files`` is called before each file and between
    pieces of a big one; it may raise to stop the copy (a cancelled run: gigabytes of inputs
    took minutes to copy after Ctrl-C), which leaves a half-filled ``work`` to remove."""
    if len(inputs) == 1 and not each_in_a_folder(1, in_folders=in_folders):
        (source,) = inputs.values()
        _copy_input(source, work, between_files)
    else:
        for name, source in sorted(inputs.items()):
            _copy_input(source, work / name, between_files)


def _copy_input(
    source: Path, folder: Path, between_files: Callable[[], None] | None = None
) -> None:
    """Copy an input's folder (or a data file, under its own name) into ``folder``."""
    if source.is_file():
        folder.mkdir(exist_ok=True)
        copy_file(source, folder / source.name, between_chunks=between_files)
        os.chmod(folder / source.name, stat.S_IMODE(source.stat().st_mode) | COPY_FILE_BITS)
    else:
        copy_tree_writable(source, folder, between_files=between_files)


def copy_tree_writable(
    source: Path,
    target: Path,
    *,
    between_files: Callable[[], None] | None = None,
    keep_times: bool = False,
) -> tuple[int, int]:
    """Copy a (possibly read-only) tree so that the copy is writable by its owner.

    Modes are kept, plus the owner's write bit (and the owner's search bit on folders): an
    executable stays executable, as Kliko's join IO needs for a tool handed on in ``/work``.
    Links are copied as links, never followed; a sparse file stays sparse. A named pipe, socket
    or device is refused (:class:`SpecialFileError`): copying one could block forever or read a
    device. Returns the number of files and their total size; ``between_files`` is called
    before each file and between pieces of a big one (to stop a long copy on cancellation).
    With ``keep_times`` each file keeps its modification time (an export: see
    :mod:`kliko_async.engine.samecopy`).
    """
    files = size = 0
    _make_folder(target, os.lstat(source))
    for dirpath, dirnames, filenames in walk(source):
        rel = Path(dirpath).relative_to(source)
        for name in [*dirnames, *filenames]:
            if between_files is not None:
                between_files()
            src, dst = Path(dirpath) / name, target / rel / name
            info = os.lstat(src)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISDIR(info.st_mode):
                _make_folder(dst, info)
            elif stat.S_ISREG(info.st_mode):
                copy_file(src, dst, between_chunks=between_files)
                os.chmod(dst, stat.S_IMODE(info.st_mode) | COPY_FILE_BITS)
                if keep_times:
                    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
                files, size = files + 1, size + info.st_size
            else:
                raise SpecialFileError(src, info.st_mode)
    return files, size


class SpecialFileError(OSError):
    """A named pipe, socket or device where only files, folders and links may be."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        super().__init__(f"{path} is {special_kind(mode)}, not a file, folder or link")


def _make_folder(path: Path, info: os.stat_result) -> None:
    path.mkdir(exist_ok=True)
    os.chmod(path, stat.S_IMODE(info.st_mode) | COPY_FOLDER_BITS)


def readable_by_anyone(root: Path) -> None:
    """Let any uid read the tree we wrote (copies of file parameters), for a step's own user.

    Links are never followed (``os.walk`` lists them but never enters them), and nothing is
    made writable by anyone but its owner.
    """
    for dirpath, _dirnames, filenames in walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):  # executables stay executable, for anyone
                os.chmod(path, 0o644 | (0o111 if info.st_mode & 0o111 else 0))
