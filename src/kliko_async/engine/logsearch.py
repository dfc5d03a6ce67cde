"""Finding a step's saved log from a chain as it is now (``kliko-async logs CHAIN STEP``): its
cache entry's log, else the log of its latest failed attempt."""

from __future__ import annotations

import glob
from pathlib import Path

from kliko_async.cache.store import RUN_LOGS, Cache
from kliko_async.engine.plan import Plan
from kliko_async.errors import CacheError, ParameterError


def find_step_log(cache: Cache, plan: Plan, step: str) -> Path:
    """The cached log of ``step`` as the chain is now, else its latest failed attempt's log."""
    if step not in plan.steps:
        raise ParameterError(
            f"no step named '{step}'", where=plan.source, hint=f"Steps: {', '.join(plan.order)}."
        )
    if step in plan.unbuilt:
        raise CacheError(
            f"no saved log for step '{step}': {plan.unbuilt[step]}, so it has not run as it is",
            where=plan.source,
            hint="Run the chain first.",
        )
    entry = plan.steps[step].cached or cache.lookup(plan.steps[step].key)
    if entry is not None:
        return entry.log_path
    failed = sorted(
        (cache.root / RUN_LOGS).glob(f"*/{glob.escape(step)}.log"), key=lambda p: p.stat().st_mtime
    )
    if failed:
        return failed[-1]
    raise CacheError(
        f"no saved log for step '{step}': it has not run with its current inputs and parameters",
        where=plan.source,
        hint="Run the chain first.",
    )
