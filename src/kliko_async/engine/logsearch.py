"""Finding a step's saved log from a chain as it is now (``kliko-async logs CHAIN STEP``): its
cache entry's log, else the log of its latest failed attempt."""

from __future__ import annotations

import glob
from pathlib import Path

from kliko_async.cache.store import RUN_LOGS, Cache
from kliko_async.engine.plan import Plan
from kliko_async.errors import CacheError, ParameterError
from kliko_async.model.chainmodel import matrix_steps
from kliko_async.model.yamltext import did_you_mean

SHOWN_STEPS = 20
"""An unknown step's error names at most this many of the chain's steps."""


def unknown_step(plan: Plan, step: str) -> ParameterError:
    """Why ``step`` is not a step of ``plan``: a matrix step (each of its expansions has its own
    log: one is named), or a name not in the chain (with the steps there, each matrix step once,
    not its thousand expansions)."""
    family = matrix_steps(planned.step for planned in plan.steps.values())
    # The chain's steps, a matrix step once (where its first expansion is).
    names = list(dict.fromkeys(family.get(name, name) for name in plan.order))
    expansions: dict[str, list[str]] = {}
    for name in plan.order:
        if name in family:
            expansions.setdefault(family[name], []).append(name)
    if step in expansions:
        members = expansions[step]
        return ParameterError(
            f"'{step}' is a matrix step of {len(members):,} expansions, each with its own log",
            where=plan.source,
            hint=f"Name one, such as '{members[0]}' (quoted in the shell).",
        )
    asked = step.split("[", 1)[0]
    if asked in expansions:  # an expansion that is not there (values mistyped, or changed)
        return ParameterError(
            f"no step named '{step}': the matrix step '{asked}' has no such expansion",
            where=plan.source,
            hint=f"Its {len(expansions[asked]):,} expansions are named like "
            f"'{expansions[asked][0]}'; 'kliko-async run --dry-run' lists them all.",
        )
    shown = [f"{n} ({len(expansions[n]):,} expansions)" if n in expansions else n for n in names]
    more = f" and {len(shown) - SHOWN_STEPS:,} more" if len(shown) > SHOWN_STEPS else ""
    return ParameterError(
        f"no step named '{step}'{did_you_mean(step, names)}",
        where=plan.source,
        hint=f"Steps: {', '.join(shown[:SHOWN_STEPS])}{more}.",
    )


def find_step_log(cache: Cache, plan: Plan, step: str) -> Path:
    """The cached log of ``step`` as the chain is now, else its latest failed attempt's log."""
    if step not in plan.steps:
        raise unknown_step(plan, step)
    if step in plan.unbuilt:
        raise CacheError(
            f"no saved log for step '{step}': {plan.unbuilt[step]}, so it has not run as it is",
            where=plan.source,
            hint="Run the chain first.",
        )
    entry = plan.steps[step].cached or cache.lookup(plan.steps[step].key)
    if entry is not None:
        return entry.log_path
    failed = newest_failed_logs(cache, step).get(step)
    if failed is not None:
        return failed
    unmade = [
        name
        for name in dict.fromkeys(plan.steps[step].step.inputs)
        if name in plan.steps
        and (plan.steps[name].cached or cache.lookup(plan.steps[name].key)) is None
    ]
    if unmade:  # skipped, or not reached: it waits for them (a failed one skips what follows)
        inputs = " and ".join(f"'{name}'" for name in unmade[:3])
        more = f" (and {len(unmade) - 3:,} more)" if len(unmade) > 3 else ""
        broken = [name for name in unmade if newest_failed_logs(cache, name).get(name)]
        raise CacheError(
            f"no saved log for step '{step}': it has not run with its current inputs and "
            f"parameters, since its input {inputs}{more} has not finished as it is now "
            "(a step runs once its inputs have; a failed one skips the steps after it)",
            where=plan.source,
            hint=f"See why '{broken[0]}' failed: kliko-async logs {plan.source} '{broken[0]}'."
            if broken
            else "Run the chain first.",
        )
    raise CacheError(
        f"no saved log for step '{step}': it has not run with its current inputs and parameters",
        where=plan.source,
        hint="Run the chain first.",
    )


def newest_failed_logs(cache: Cache, step: str | None = None) -> dict[str, Path]:
    """Step name -> the newest kept log of a failed attempt (``logs/<run>/<step>.log``), for
    ``step`` alone (one look in each run's folder) or for every step (None: one listing)."""
    pattern = f"*/{glob.escape(step)}.log" if step is not None else "*/*.log"
    found: dict[str, tuple[float, Path]] = {}
    for path in (cache.root / RUN_LOGS).glob(pattern):
        try:
            modified = path.stat().st_mtime
        except OSError:  # removed meanwhile (cache gc)
            continue
        name = path.name.removesuffix(".log")
        if name not in found or modified > found[name][0]:
            found[name] = (modified, path)
    return {name: path for name, (_, path) in found.items()}
