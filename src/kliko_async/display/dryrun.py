"""``run --dry-run``: each step, its key, and whether it would run or come from the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from kliko_async.display.terminal import printable
from kliko_async.engine.plan import Plan


def print_plan(plan: Plan, stream: TextIO) -> None:
    width = max((len(n) for n in [*plan.data, *plan.order]), default=4)
    for name, data in plan.data.items():
        read = f"{data.hashed_files} read now" if data.hashed_files else "none read now"
        digest, where = data.key.removeprefix("data:")[:16], printable(str(data.path))
        stream.write(
            f"{name:<{width}}  {digest}  {'data':<22}  {where}  "
            f"({data.files} file(s), {data.size:,} bytes; {read})\n"
        )
    for name in plan.order:
        if name in plan.unbuilt:
            unknown = "(no key yet)"
            stream.write(f"{name:<{width}}  {unknown:<16}  would run: {plan.unbuilt[name]}\n")
            continue
        step = plan.steps[name]
        if step.cached is not None:
            state = f"cached (ran {step.cached.manifest.duration_s:.1f}s)"
        else:
            state = "forced" if step.forced else "would run"
        inputs = shown_inputs(step.step.inputs)
        stream.write(
            f"{name:<{width}}  {step.key[:16]}  {state:<22}  {step.image.ref}  <- {inputs}\n"
        )
    runs = len(plan.to_run)
    stream.write(f"{runs} to run, {len(plan.order) - runs} cached\n")


SHOWN_INPUTS = 8
"""A step's inputs listed by name up to this many; past it, the rest is counted."""


def shown_inputs(inputs: Sequence[str]) -> str:
    """A step's inputs on one line: the expansions of a matrix step (``s[tag=a]``, ...) as one
    ``s[...]`` with their count when there are more than three, and at most ``SHOWN_INPUTS``
    names, the rest counted (a consumer of a 10,000-way matrix is one short line)."""
    groups: dict[str, list[str]] = {}
    for name in inputs:
        groups.setdefault(name.split("[", 1)[0] if name.endswith("]") else name, []).append(name)
    parts: list[str] = []
    for prefix, names in groups.items():
        if len(names) > 3:
            parts.append(f"{prefix}[...] ({len(names):,} expansions)")
        else:
            parts.extend(names)
    if len(parts) > SHOWN_INPUTS:
        rest = len(parts) - SHOWN_INPUTS
        parts = [*parts[:SHOWN_INPUTS], f"and {rest:,} more"]
    return ", ".join(parts) or "-"
