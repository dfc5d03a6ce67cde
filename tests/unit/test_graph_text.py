"""``kliko-async graph`` in the terminal, on the fake runtime: a matrix step's expansions in a
layer are one line, with their cache states counted, and a consumer's inputs say how many."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from test_scheduler import Lab

from kliko_async.display.graph import print_graph
from kliko_async.engine.images import ImageResolver
from kliko_async.engine.plan import plan_chain

pytestmark = pytest.mark.anyio


async def drawn(lab: Lab, steps: dict[str, object]) -> list[str]:
    cache = lab.cache
    cache.ensure_writable()
    plan = await plan_chain(lab.chain(steps), resolver=ImageResolver(lab.fake, None), cache=cache)
    console = Console(file=io.StringIO(), width=200, no_color=True)
    print_graph(plan, console)
    assert isinstance(console.file, io.StringIO)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


async def test_a_matrix_steps_expansions_are_one_line_with_their_states_counted(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path)
    sweep = {"image": "work", "matrix": {"n": list(range(12))}}
    few = {"image": "work", "matrix": {"n": [100, 101]}}
    steps = {"sweep": sweep, "few": few, "all": {"image": "work", "inputs": ["sweep", "few"]}}
    await lab.run({"sweep": {**sweep, "matrix": {"n": [0, 1, 2]}}})  # three of twelve cached

    lines = await drawn(lab, steps)

    assert lines[0].endswith("15 steps in 2 layers; 3 cached, 12 to run")
    assert lines[1:] == [
        "layer 1",
        "  sweep[...] (12 expansions)  3 cached, 9 to run  work  → all",
        "  few[n=100]                  to run              work  → all",
        "  few[n=101]                  to run              work  → all",
        "layer 2",
        "  all                         to run              work  ← sweep[...] (12 expansions), "
        "few[n=100], few[n=101]",
    ]
