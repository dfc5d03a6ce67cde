"""Before a Slurm run: does every node see the cache folder, and the chain's data, at the same
path? Jobs read their inputs and write their outputs there, and read data where the chain names
it; a node that cannot would fail every step sent to it, one by one.

One job on every responding node reads a token written here and writes it back, and looks for
each data path; the answer is remembered for that set of nodes and paths. A check that cannot
run within ``PROBE_DEADLINE_SECONDS`` (a busy cluster), or whose end squeue cannot tell, is left
to the jobs themselves.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kliko_async.cache.durable import remove_tree_off_loop
from kliko_async.errors import ContainerError, RuntimeUnavailable
from kliko_async.runtime.inflight import writing_into
from kliko_async.runtime.slurm.commands import parse_job_id, retrying, sbatch_transient
from kliko_async.runtime.slurm.logfiles import read_text

if TYPE_CHECKING:
    from kliko_async.runtime.slurm.runtime import SlurmRuntime

_SHARED_HINT = (
    "Put the cache and the data on a filesystem shared by every node (NFS, Lustre, GPFS, "
    "BeeGFS) and point --cache-dir and the chain's data: at it."
)


async def check_shared(runtime: SlurmRuntime, paths: Sequence[Path] = ()) -> None:
    """Refuse, clearly, when a node cannot see the cache folder or one of ``paths`` at the same
    path (see the module's text)."""
    nodes = await runtime.nodes()
    check = runtime.folder / "shared"
    wanted = sorted({str(p) for p in paths if p.exists()})  # a missing one: planning says so
    name = hashlib.sha256(
        "\0".join([runtime.options.partition or "", *nodes, "", *wanted]).encode()
    )
    verified = check / f"{name.hexdigest()[:16]}.ok"
    if verified.is_file():
        return
    probe = check / f"probe-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    probe.mkdir(parents=True)
    token = secrets.token_hex(8)
    (probe / "token").write_text(token)
    here, node = shlex.quote(str(probe)), "$SLURMD_NODENAME"
    lines = [f"cat {here}/token > {here}/seen.{node}"]
    lines += [
        f"test -e {shlex.quote(p)} || echo {shlex.quote(p)} >> {here}/missing.{node}"
        for p in wanted
    ]
    (probe / "check.sh").write_text("\n".join(lines) + "\n")
    args = [
        "sbatch",
        "--parsable",
        f"--job-name={runtime.job_prefix}check-shared",
        f"--nodes={len(nodes)}",
        "--ntasks-per-node=1",
        f"--nodelist={','.join(nodes)}",
        f"--output={probe}/slurm.out",
        "--time=2",
        *runtime.partition_args(),
        *runtime.options.sbatch_options,
        f"--wrap=srun --ntasks-per-node=1 sh {shlex.quote(str(probe / 'check.sh'))}",
    ]
    try:
        try:
            job_id = parse_job_id(await retrying(args, transient=sbatch_transient))
        except ContainerError as error:
            raise RuntimeUnavailable(
                f"could not submit the check of the cache folder: {error}"
            ) from None
        if not await runtime.wait_probe(job_id, probe):
            return  # not run in time: each job checks that it sees its folder
        blind = [n for n in nodes if read_text(probe / f"seen.{n}") != token]
        if blind:
            raise RuntimeUnavailable(
                f"the cache folder {runtime.folder.parent} is not visible at the same path on "
                f"node(s) {', '.join(blind)}, so jobs there could not read their inputs or "
                "write their outputs",
                hint=_SHARED_HINT,
            )
        missing = {n: read_text(probe / f"missing.{n}").split("\n") for n in nodes}
        unseen = sorted({p for found in missing.values() for p in found if p})
        if unseen:
            where = [n for n, found in missing.items() if any(found)]
            raise RuntimeUnavailable(
                f"the chain's data {unseen[0]} is not visible at the same path on node(s) "
                f"{', '.join(where)}, so steps there could not read it"
                + (f" ({len(unseen)} data paths in all)" if len(unseen) > 1 else ""),
                hint=_SHARED_HINT,
            )
        verified.write_text(" ".join(nodes) + "\n")
    finally:
        if not writing_into(probe):  # not under a check job left running
            await remove_tree_off_loop(probe)
