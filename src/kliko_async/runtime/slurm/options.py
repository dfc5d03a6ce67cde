"""How a run goes onto a Slurm cluster: the options a user gives (``--partition``, ``--slurm-opt``,
``--slurm-max-jobs``, the container engine on the nodes, how often the queue is polled)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.runtime.slurm.script import Engine


class SlurmOptions(BaseModel):
    """How kliko-async submits jobs: the partition, extra ``sbatch`` options, the engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(None, description="sbatch --partition; None: the default.")
    sbatch_options: tuple[str, ...] = Field((), description="Added to every sbatch call.")
    engine: Engine = Field(
        "auto",
        description="docker, charliecloud, or auto: Docker where the node has an engine, "
        "Charliecloud's ch-run elsewhere (images are then converted into the cache).",
    )
    poll_fastest: float = Field(0.25, gt=0, description="Seconds between squeue calls at first.")
    poll_slowest: float = Field(3.0, gt=0, description="The longest wait between squeue calls.")
    max_jobs: int = Field(
        100,
        ge=1,
        description="At most this many of the run's jobs pending or running at once "
        "(a site's per-user limit is often 100).",
    )
    requeue: bool = Field(
        False,
        description="Let Slurm requeue a job after a node failure or preemption (sbatch "
        "--requeue); by default jobs go in with --no-requeue and the step's retries apply.",
    )
    patience: float = Field(
        120.0,
        gt=0,
        description="Seconds that Slurm's commands may keep failing before the steps "
        "waiting on them fail (each failed call is retried with backoff meanwhile).",
    )
