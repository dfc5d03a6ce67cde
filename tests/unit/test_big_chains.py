"""Big chains: bounded before they cost minutes, planned in linear time, stoppable, shown short.

Their speed is measured by ``python -m benchmarks --only bigchain``; these tests check the
behaviour that makes that speed possible and safe.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import pytest

from kliko_async import api
from kliko_async.display.dryrun import shown_inputs
from kliko_async.engine import plan as planning
from kliko_async.errors import ChainError
from kliko_async.model.chain import MAX_CHAIN_BYTES, load_chain, parse_chain
from kliko_async.model.chainmodel import MAX_STEPS
from kliko_async.runtime.fake import FakeRuntime

NOOP = "schema_version: 3\nio: split\nsections:\n  - {name: m, fields: [{name: i, type: int}]}\n"


def test_a_chain_of_more_steps_than_allowed_is_refused_before_its_steps_are_checked() -> None:
    steps = {f"s{i}": {"image": "x/y", "params": {"i": i}} for i in range(MAX_STEPS + 1)}
    with pytest.raises(ChainError, match=f"has {MAX_STEPS + 1:,} steps, more than the"):
        parse_chain({"steps": steps}, source="big.yaml", base_dir=Path("."))


def test_a_matrix_past_the_bound_is_refused_before_it_is_expanded() -> None:
    values = list(range(1_000))
    data = {"steps": {"s": {"image": "x/y", "matrix": {"a": values, "b": values}}}}
    with pytest.raises(ChainError) as caught:
        parse_chain(data, source="sweep.yaml", base_dir=Path("."))
    assert "makes 1,000,000 combinations (1,000 x 1,000)" in str(caught.value)
    assert f"more than the {MAX_STEPS:,} steps" in str(caught.value)


def test_matrices_that_together_pass_the_bound_are_refused() -> None:
    values = list(range(60_000))
    data = {"steps": {"a": {"image": "x/y", "matrix": {"i": values}}, "b": {"image": "x/y"}}}
    data["steps"]["b"]["matrix"] = {"i": values}
    with pytest.raises(ChainError, match="120,000 steps once its matrices are expanded"):
        parse_chain(data, source="two.yaml", base_dir=Path("."))


def test_a_chain_file_past_the_size_bound_is_refused_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as sparse:  # its size only: refused on its size
        sparse.truncate(MAX_CHAIN_BYTES + 1)
    with pytest.raises(ChainError) as caught:
        load_chain(path)
    assert f"more than the {MAX_CHAIN_BYTES:,} bytes allowed" in str(caught.value)
    assert "matrix" in (caught.value.hint or "")


def test_a_10000_way_matrix_with_repeated_values_names_the_repeat(tmp_path: Path) -> None:
    """The duplicate check that was quadratic (list.count per name) still finds repeats."""
    values = [f"t{i}" for i in range(10_000)] + ["t5"]
    data = {"steps": {"s": {"image": "x/y", "matrix": {"tag": values}}}}
    with pytest.raises(ChainError, match="t5"):
        parse_chain(data, source="dup.yaml", base_dir=tmp_path)


def test_run_blocking_keeps_the_result_out_of_the_main_task() -> None:
    """asyncio.run formats the main task's repr, result included, when it restores the SIGINT
    handler on Python 3.11: a plan of 10,000 steps took seconds of pydantic reprs there."""

    class Big:
        formatted = 0

        def __repr__(self) -> str:
            Big.formatted += 1
            return "Big()"

    async def make() -> Big:
        return Big()

    result = api.run_blocking(make)
    assert isinstance(result, Big)
    assert Big.formatted == 0


@pytest.mark.anyio
async def test_planning_lets_other_tasks_in_so_that_ctrl_c_gets_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = FakeRuntime()
    runtime.add_image("x/noop", NOOP)
    steps = 4 * planning.CHECKPOINT_EVERY
    data = {"steps": {f"s{i}": {"image": "x/noop", "params": {"i": i}} for i in range(steps)}}
    chain = parse_chain(data, source="many.yaml", base_dir=tmp_path)
    turns = 0
    seen: list[int] = []  # the other task's turns so far, as each step is keyed
    keyed = planning.cache_key

    def counting_key(ingredients: object) -> str:
        seen.append(turns)
        return keyed(ingredients)  # type: ignore[arg-type]

    monkeypatch.setattr(planning, "cache_key", counting_key)
    planned = anyio.Event()

    async def other_task() -> None:
        nonlocal turns
        while not planned.is_set():
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        plan = await api.dry_run(chain, runtime=runtime, cache_dir=tmp_path / "cache")
        planned.set()
    assert len(plan.order) == len(seen) == steps
    changes = sum(1 for a, b in itertools.pairwise(seen) if b != a)
    assert changes >= steps // planning.CHECKPOINT_EVERY - 1  # the other task ran in between


def test_a_consumer_of_a_big_matrix_is_shown_on_one_short_line() -> None:
    expansions = [f"s[tag=t{i}]" for i in range(10_000)]
    assert shown_inputs(expansions) == "s[...] (10,000 expansions)"
    assert shown_inputs(["a", *expansions[:3], "b"]) == "a, s[tag=t0], s[tag=t1], s[tag=t2], b"
    many = [f"step{i}" for i in range(20)]
    assert shown_inputs(many) == ", ".join(many[:8]) + ", and 12 more"
    assert shown_inputs([]) == "-"
