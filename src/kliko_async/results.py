"""What a run gives back: how each step ended, and the run as a whole."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.errors import RunFailed, StepFailure

StepState = Literal["done", "cached", "failed", "skipped", "cancelled"]


class ResourceUse(BaseModel):
    """What a container used, as its engine measured it (sampled while it ran: a peak between
    two samples may be missed, and the CPU time is the last sample's). None: not measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_s: float | None = Field(None, description="CPU seconds, user and system, all cores.")
    peak_memory_bytes: int | None = Field(None, description="The most memory it held at once.")
    read_bytes: int | None = Field(None, description="Bytes read from block devices.")
    written_bytes: int | None = Field(None, description="Bytes written to block devices.")
    samples: int = Field(0, description="How many measurements this is made of.")


class StepResult(BaseModel):
    """How one step ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    key: str
    state: StepState
    output: Path | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    reason: str | None = None
    log_path: Path | None = None
    last_lines: tuple[str, ...] = ()
    """The last lines of a failed step's log (its full log is at ``log_path``)."""


class RunResult(BaseModel):
    """How a whole run ended, step by step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    steps: dict[str, StepResult]
    wall_s: float
    saved_s: float
    matrix: dict[str, str] = Field(
        default_factory=dict,
        description="Each expansion of a matrix step -> the name of that matrix step.",
    )

    @property
    def ok(self) -> bool:
        return all(r.state in ("done", "cached") for r in self.steps.values())

    def count(self, state: StepState) -> int:
        return sum(1 for r in self.steps.values() if r.state == state)

    def raise_for_failures(self) -> None:
        failures = [
            StepFailure(
                r.name,
                r.reason or r.state,
                exit_code=r.exit_code,
                last_lines=r.last_lines,
                log_path=str(r.log_path) if r.log_path else None,
                matrix_step=self.matrix.get(r.name),
            )
            for r in self.steps.values()
            if r.state in ("failed", "cancelled")
        ]
        if failures:
            raise RunFailed(failures)
