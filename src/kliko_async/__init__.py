"""kliko-async: run chains of Kliko containers as a concurrent DAG with a content-addressed cache.

The names below are the promised surface for applications that embed kliko-async; everything
else is importable but may change. Two names are easily confused: :class:`StepFailed` is the event
a run emits when a step fails; :class:`StepFailure` is the record of that failure (exit code,
reason, last lines, log path) that :class:`RunFailed` carries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        DataKeyed,
        DataKeying,
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

# Imported on first use (PEP 562): `kliko-async --version` and `--help` need none of them.
_LAZY = {
    "CacheError": "kliko_async.errors",
    "Chain": "kliko_async.model.chain",
    "ChainError": "kliko_async.errors",
    "ChainRun": "kliko_async.api",
    "ContainerError": "kliko_async.errors",
    "Event": "kliko_async.events",
    "EventConsumer": "kliko_async.events",
    "ExportStarted": "kliko_async.events",
    "DataKeyed": "kliko_async.events",
    "DataKeying": "kliko_async.events",
    "ImageBuilding": "kliko_async.events",
    "ImageBuilt": "kliko_async.events",
    "ImageError": "kliko_async.errors",
    "IngredientChange": "kliko_async.engine.explain",
    "KlikoError": "kliko_async.errors",
    "LogLine": "kliko_async.events",
    "LogLinesSkipped": "kliko_async.events",
    "OutputExported": "kliko_async.events",
    "ParameterError": "kliko_async.errors",
    "Plan": "kliko_async.engine.plan",
    "RunFailed": "kliko_async.errors",
    "RunFinished": "kliko_async.events",
    "RunResult": "kliko_async.results",
    "RunStarted": "kliko_async.events",
    "RuntimeUnavailable": "kliko_async.errors",
    "SlurmOptions": "kliko_async.runtime.slurm.options",
    "SpecError": "kliko_async.errors",
    "Step": "kliko_async.model.chain",
    "StepCached": "kliko_async.events",
    "StepCancelled": "kliko_async.events",
    "StepExplanation": "kliko_async.engine.explain",
    "StepFailed": "kliko_async.events",
    "StepFailure": "kliko_async.errors",
    "StepFinished": "kliko_async.events",
    "StepPreparing": "kliko_async.events",
    "StepQueued": "kliko_async.events",
    "StepResult": "kliko_async.results",
    "StepRetried": "kliko_async.events",
    "StepSkipped": "kliko_async.events",
    "StepStarted": "kliko_async.events",
    "StepWaitingForLock": "kliko_async.events",
    "chain_from_pairs": "kliko_async.model.chain",
    "dry_run": "kliko_async.api",
    "explain": "kliko_async.api",
    "load_chain": "kliko_async.model.chain",
    "open_run": "kliko_async.api",
    "run": "kliko_async.api",
    "run_chain": "kliko_async.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "Chain",
    "ChainError",
    "ChainRun",
    "ContainerError",
    "DataKeyed",
    "DataKeying",
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
