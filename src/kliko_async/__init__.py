"""kliko-async: run chains of Kliko containers as a concurrent DAG with a content-addressed cache.

The names below are the promised surface for applications that embed kliko-async; everything
else is importable but may change. Two names are easily confused: :class:`StepFailed` is the event
a run emits when a step fails; :class:`StepFailure` is the record of that failure (exit code,
reason, last lines, log path) that :class:`RunFailed` carries.
"""

from kliko_async.api import ChainRun, dry_run, explain, open_run, run, run_chain
from kliko_async.engine.explain import IngredientChange, StepExplanation
from kliko_async.engine.plan import Plan
from kliko_async.errors import (
    CacheError,
    ChainError,
    ContainerError,
    ImageError,
    KlikoError,
    ParameterError,
    RunFailed,
    RuntimeUnavailable,
    SpecError,
    StepFailure,
)
from kliko_async.events import (
    Event,
    EventConsumer,
    ExportStarted,
    ImageBuilding,
    ImageBuilt,
    LogLine,
    LogLinesSkipped,
    OutputExported,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepPreparing,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepStarted,
    StepWaitingForLock,
)
from kliko_async.model.chain import Chain, Step, chain_from_pairs, load_chain
from kliko_async.results import RunResult, StepResult
from kliko_async.runtime.slurm.options import SlurmOptions

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "Chain",
    "ChainError",
    "ChainRun",
    "ContainerError",
    "Event",
    "EventConsumer",
    "ExportStarted",
    "ImageBuilding",
    "ImageBuilt",
    "ImageError",
    "IngredientChange",
    "KlikoError",
    "LogLine",
    "LogLinesSkipped",
    "OutputExported",
    "ParameterError",
    "Plan",
    "RunFailed",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "RuntimeUnavailable",
    "SlurmOptions",
    "SpecError",
    "Step",
    "StepCached",
    "StepCancelled",
    "StepExplanation",
    "StepFailed",
    "StepFailure",
    "StepFinished",
    "StepPreparing",
    "StepQueued",
    "StepResult",
    "StepRetried",
    "StepSkipped",
    "StepStarted",
    "StepWaitingForLock",
    "__version__",
    "chain_from_pairs",
    "dry_run",
    "explain",
    "load_chain",
    "open_run",
    "run",
    "run_chain",
]
