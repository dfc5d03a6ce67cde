"""Slurm's commands as kliko-async calls them: run one, retry a transient failure with backoff,
and read ``sbatch --parsable``'s answer.

pyslurm has no release for Slurm 22.05, so the commands are run with ``anyio.run_process``. A
controller that is restarting, overloaded or briefly unreachable makes any command fail for a
while; such failures are retried (``retrying``) and only one that persists reaches a step.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Awaitable, Callable, Sequence

import anyio

from kliko_async.errors import ContainerError, RuntimeUnavailable

Command = Callable[[Sequence[str]], Awaitable[subprocess.CompletedProcess[bytes]]]
"""How a Slurm command is run: ``slurm_command``, or a stand-in in tests."""

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds between the tries of a failed call: about a minute in all before it counts as
persistent (a controller restart takes seconds; a failover up to SlurmctldTimeout)."""

TRANSIENT = re.compile(
    r"timed out|time ?out|unable to contact|connection refused|temporarily unavailable|"
    r"temporarily unable|try again|communication|zero bytes|not responding|in standby|"
    r"MaxSubmit|submit limit|too many",
    re.IGNORECASE,
)
"""sbatch's errors that waiting may clear (an unreachable controller, a submit limit); every
other refusal (a bad option, an impossible request) is final at once."""

CALL_DEADLINE_SECONDS = 30
"""How long one Slurm command may take before it counts as not answering: Slurm's own
commands give up after MessageTimeout (10 s by default) and retry inside; one that has not
answered in 30 s waits for a controller that is gone (the poll's deadline is the same)."""

_JOB_ID = re.compile(r"^(\d+)(?:;[\w.-]+)?$")

_HINT = (
    "Run kliko-async where Slurm's commands (sbatch, squeue, scancel, sinfo) work, or start "
    "the project's test cluster with scripts/slurm-cluster up."
)


class SlurmCallFailed(ContainerError):
    """A Slurm command failed on every try (or at once, where retrying cannot help)."""


class SlurmNoAnswer(SlurmCallFailed):
    """A Slurm command gave no answer within its deadline and was stopped: it is not tried
    again (another try would wait as long), so a controller that is gone is said at once."""


async def slurm_command(
    args: Sequence[str], *, deadline: float | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run one Slurm command; its result whatever its exit status. No such command: refused;
    no answer within ``deadline`` seconds (``CALL_DEADLINE_SECONDS``): stopped,
    ``SlurmNoAnswer`` (a hung squeue at start once hung the run for ever, saying nothing)."""
    deadline = CALL_DEADLINE_SECONDS if deadline is None else deadline
    with anyio.move_on_after(deadline):
        try:
            # In a session of its own: Ctrl-C in a terminal reaches the whole foreground
            # process group, and an sbatch killed half-way is neither a refusal nor a job
            # known to be cancelled. kliko-async alone answers the signal.
            return await anyio.run_process(list(args), check=False, start_new_session=True)
        except FileNotFoundError:
            raise RuntimeUnavailable(
                f"Slurm's '{args[0]}' command is not installed", hint=_HINT
            ) from None
        except OSError as error:
            raise RuntimeUnavailable(
                f"cannot run Slurm's '{args[0]}': {error}", hint=_HINT
            ) from None
    raise SlurmNoAnswer(f"{args[0]} gave no answer within {deadline:g} s ({shlex.join(args)})")


def not_answering(error: SlurmCallFailed) -> RuntimeUnavailable:
    """The refusal of a run whose start needs Slurm, when Slurm does not answer."""
    return RuntimeUnavailable(
        f"Slurm does not answer: {error}",
        hint="Check that slurmctld runs and SLURM_CONF points at its slurm.conf "
        "(the test cluster: scripts/slurm-cluster up).",
    )


def command_error(done: subprocess.CompletedProcess[bytes]) -> str:
    """The useful lines of a failed Slurm command's output, as one line."""
    text = (done.stderr or done.stdout or b"").decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or f"exit status {done.returncode}"


async def retrying(
    args: Sequence[str],
    *,
    command: Command = slurm_command,
    transient: Callable[[subprocess.CompletedProcess[bytes]], bool] = lambda _: True,
    delays: Sequence[float] = RETRY_DELAYS,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` until it succeeds; a failure ``transient`` accepts is tried again after
    each of ``delays``. The last failure (or a final one) raises ``SlurmCallFailed``."""
    tries = 0
    while True:
        done = await command(args)
        if done.returncode == 0:
            return done
        if not transient(done) or tries >= len(delays):
            after = f" (after {tries + 1} tries)" if tries else ""
            raise SlurmCallFailed(f"{args[0]} failed{after}: {command_error(done)}")
        await anyio.sleep(delays[tries])
        tries += 1


def sbatch_transient(done: subprocess.CompletedProcess[bytes]) -> bool:
    """Whether sbatch's refusal may clear by waiting (see ``TRANSIENT``)."""
    return bool(TRANSIENT.search(command_error(done)))


def parse_job_id(done: subprocess.CompletedProcess[bytes]) -> str:
    """The job ID in ``sbatch --parsable``'s answer (``ID`` or ``ID;cluster``): the first line
    that is one, since a site's wrapper or job_submit plugin may add notices around it (a
    NOTICE after the ID once failed the step while its job ran). No such line is a clear
    failure rather than a job watched forever."""
    text = done.stdout.decode("utf-8", "replace").strip()
    lines = (_JOB_ID.match(line.strip()) for line in text.splitlines())
    found = next((line for line in lines if line is not None), None)
    if found is None:
        said = f"'{text[:200]}'" if text else "nothing"
        raise ContainerError(
            f"sbatch answered {said} (exit status {done.returncode}) where a job ID was expected; "
            "whether a job was submitted is unknown (check squeue --me)"
        )
    return found.group(1)


def user_name() -> str:
    """The name of the user running this process (whose jobs are ours), else its uid."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


async def sinfo(partition: str | None, fields: str, *, per_node: bool) -> list[list[str]]:
    """sinfo's rows of the partition (the cluster's default one when none is set)."""
    args = ["sinfo", "-h", "-o", f"%P {fields}", *(["-N"] if per_node else [])]
    try:
        done = await retrying(args, delays=RETRY_DELAYS[:3])
    except SlurmCallFailed as error:
        raise not_answering(error) from None
    rows = [line.split() for line in done.stdout.decode().splitlines() if line.strip()]
    wanted = partition
    # sinfo marks the default partition with '*': naming it is naming it all the same.
    chosen = [r[1:] for r in rows if (r[0].rstrip("*") == wanted if wanted else r[0].endswith("*"))]
    if not chosen:
        if wanted:
            known = ", ".join(sorted({r[0].rstrip("*") for r in rows}))
            raise RuntimeUnavailable(f"Slurm has no partition '{wanted}' (it has: {known})")
        raise RuntimeUnavailable("Slurm has no default partition: give one with --partition")
    return chosen


def saying_errors(said: list[str]) -> Command:
    """Slurm's command, keeping each failure's words in ``said`` (retried calls cut short by a
    deadline raise nothing that says them)."""

    async def command(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        done = await slurm_command(args)
        if done.returncode != 0:
            said.append(command_error(done))
        return done

    return command
