"""One exception hierarchy whose messages are written for people.

Every error carries what is wrong, where (file, image, step, field) and, when known, what to do.
The CLI prints ``str(error)`` as one paragraph and exits non-zero without a traceback.
"""

from __future__ import annotations

import errno
import reprlib
from pathlib import Path

SHOWN_CHARACTERS = 60
"""About how much of a value an error message quotes (see :func:`shown`)."""
MAX_MESSAGE_CHARACTERS = 10_000
"""The longest error message; a longer one loses its middle, so that its start (what and where)
and its end (what to do) stay."""


INPUT_EXIT = 2
"""The exit status when an input cannot be used (a chain file, a kliko.yml, parameters, a
setting), as for a bad command-line option; 1 is for a run that failed."""


class KlikoError(Exception):
    """Base of every error kliko-async raises on purpose.

    ``where`` names the file, image or step; ``hint`` says what to do about it.
    """

    exit_status = 1
    """The status the ``kliko-async`` command exits with when this error ends it."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint and text.endswith("\n"):  # after quoted lines: on a line of its own
            text = f"{text}  {self.hint}"
        elif self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        if len(text) > MAX_MESSAGE_CHARACTERS:
            cut = len(text) - MAX_MESSAGE_CHARACTERS
            text = f"{text[:7000]} [... {cut:,} characters cut ...] {text[-(3000 - 40) :]}"
        return text


class SpecError(KlikoError):
    """A kliko.yml that is missing, unreadable or invalid."""

    exit_status = INPUT_EXIT


class ParameterError(KlikoError):
    """Parameters that do not fit an image's kliko.yml."""

    exit_status = INPUT_EXIT


class ChainError(KlikoError):
    """A chain file that is unreadable or describes an invalid DAG."""

    exit_status = INPUT_EXIT


class CacheError(KlikoError):
    """The cache folder cannot be used (not writable, full disk, corrupt entry)."""


class UnusableCacheFolder(CacheError):
    """The cache folder given (or the default) cannot be made or written at all: a setting that
    cannot be used, said before anything runs."""

    exit_status = INPUT_EXIT


class UnpublishableOutput(CacheError):
    """A step's output holds what the cache cannot keep: a named pipe, socket or device."""


class RuntimeUnavailable(KlikoError):
    """No container engine can be reached."""


class ImageError(KlikoError):
    """An image that does not exist locally and cannot be built or pulled."""


class MissingImage(ImageError):
    """A chain or command names an image that is not on the engine and cannot be pulled: the
    input cannot be used, said before anything runs."""

    exit_status = INPUT_EXIT


class UnusableBuildFolder(ImageError):
    """A step's ``build:`` folder that does not exist, is not a folder or holds no Dockerfile:
    the chain names what is not there, said before anything runs."""

    exit_status = INPUT_EXIT


class ContainerError(KlikoError):
    """The container engine refused or lost a container."""


class StepFailure(KlikoError):
    """A step ended without success (non-zero exit, timeout, killed, cache publish failed).

    Its fields say why: ``exit_code`` (None when the container never exited by itself),
    ``reason`` in words, the ``last_lines`` of its log and ``log_path``, its full saved log.
    """

    SHOWN_LINES = 10
    """How many of the last log lines the message quotes (``last_lines`` keeps them all)."""

    def __init__(
        self,
        step: str,
        reason: str,
        *,
        exit_code: int | None = None,
        last_lines: tuple[str, ...] | list[str] = (),
        log_path: str | None = None,
        matrix_step: str | None = None,
    ) -> None:
        self.step = step
        self.matrix_step = matrix_step
        """The matrix step ``step`` is an expansion of (None: a step of its own)."""
        self.reason = reason
        self.exit_code = exit_code
        self.last_lines = tuple(last_lines)
        self.log_path = log_path
        hint = f"Its full log is in {log_path}." if log_path else None
        super().__init__(self.said(reason, last_lines), where=f"step '{step}'", hint=hint)

    @classmethod
    def said(cls, reason: str, last_lines: tuple[str, ...] | list[str]) -> str:
        """The reason, then the last few log lines."""
        shown = last_lines[-cls.SHOWN_LINES :]
        if not shown:
            return reason
        return f"{reason}; its last lines:\n" + "\n".join(f"    | {line}" for line in shown) + "\n"


FAILURES_SAID = 10
"""A RunFailed's message says this many failures (those alike of a matrix step being one)."""


class RunFailed(KlikoError):
    """A chain run in which at least one step failed; ``failures`` holds each one's details."""

    def __init__(self, failures: list[StepFailure]) -> None:
        self.failures = failures
        count = f"{len(failures)} step{'s' if len(failures) != 1 else ''} failed"
        said = _alike_said_once(failures)
        details = "\n".join(f"  {text}" for text in said[:FAILURES_SAID])
        if len(said) > FAILURES_SAID:  # 300 steps failing each its own way: 3,600 lines
            details += f"\n  … and {len(said) - FAILURES_SAID:,} more: every one is in .failures"
        super().__init__(f"{count}:\n{details}")


def _alike_said_once(failures: list[StepFailure]) -> list[str]:
    """Each failure's text; expansions of one matrix step that failed alike, with the same
    reason and last lines, said once."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[StepFailure]] = {}
    for failure in failures:
        family = failure.matrix_step or failure.step
        groups.setdefault((family, failure.reason, failure.last_lines), []).append(failure)
    said = []
    for (family, _, _), alike in groups.items():
        first = alike[0]
        if len(alike) == 1:
            said.append(str(first))
            continue
        where = f"step '{family}' ({len(alike):,} expansions: '{first.step}' … '{alike[-1].step}')"
        hint = f"Their logs are {first.log_path} and {len(alike) - 1:,} more beside it."
        text = str(
            KlikoError(
                StepFailure.said(first.reason, first.last_lines),
                where=where,
                hint=hint if first.log_path else None,
            )
        )
        said.append(text)
    return said


class Interrupted(KlikoError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_status = 130


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting a value in a message: a
    50 MB parameter value (or one from someone else's image) must not become a 50 MB error.

    A cut string says how long it was: ``'aaaa...' (52,428,800 characters)``.
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value):,} {unit})"
    if isinstance(value, int) and value.bit_length() > 4 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    short = reprlib.Repr()
    short.maxlevel, short.maxother = 3, limit
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = 6
    short.maxstring = short.maxlong = max(limit, 12)
    text = short.repr(value)
    return text if len(text) <= 2 * limit else f"{text[:limit]}..."


def os_error_text(err: OSError) -> str:
    """The readable part of an OS error ("No space left on device")."""
    return err.strerror or str(err)


def cache_hint(err: OSError, root: Path) -> str:
    """What to do about an OS error met in the cache folder ``root``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The disk holding {root} is full; free space, for example with "
            "'kliko-async cache gc --max-size 10G'."
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Check that {root} and everything in it belong to you and can be written."
    return f"Check the cache folder {root}."


def cache_os_error(
    doing: str, err: OSError, *, where: str, root: Path, kind: type[CacheError] = CacheError
) -> CacheError:
    """The error (a ``kind``) for an OS error met while ``doing`` something in the cache folder
    ``root``: what failed and why, where, and what to do about it."""
    return kind(f"{doing} ({os_error_text(err)})", where=where, hint=cache_hint(err, root))
