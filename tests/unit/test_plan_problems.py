"""A mistake many steps share is said once, naming its steps: a broken or missing image used by
a 20-way matrix, the same wrong parameter in every expansion, an unknown input of a matrix step.
Said once per step, a 1,000-way sweep printed the same sentence a thousand times, and the
image's error (one object, kept by the resolver) grew one more step name for each."""

from __future__ import annotations

from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.errors import ChainError, ImageError, ParameterError, SpecError
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeRuntime

pytestmark = pytest.mark.anyio

GOOD_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: x, type: int, initial: 0}
"""
BROKEN_YML = "schema_version: 3\nname: bad\n  description: : x\n"


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("kliko/good", GOOD_YML)
    runtime.add_image("kliko/broken", BROKEN_YML)
    return runtime


def sweep(image: str, count: int = 20, **extra: object) -> dict[str, object]:
    return {"image": image, "matrix": {"x": list(range(count))}, **extra}


async def dry_run(tmp_path: Path, fake: FakeRuntime, **steps: dict[str, object]) -> None:
    chain = parse_chain({"steps": steps}, source=str(tmp_path / "chain.yml"), base_dir=tmp_path)
    await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")


async def test_a_broken_kliko_yml_is_one_problem_naming_every_step_of_its_image(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    with pytest.raises(SpecError) as raised:
        await dry_run(tmp_path, fake, sweep=sweep("kliko/broken"), other={"image": "kliko/broken"})

    text = str(raised.value)
    assert text.startswith("steps 'sweep' (all 20 expansions) and 'other', image kliko/broken")
    assert text.count("not valid YAML") == 1
    assert "sweep[x=" not in text  # the expansions are named by their matrix step


async def test_an_image_error_is_not_grown_by_each_step_that_uses_the_image(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    steps = {f"s{i}": {"image": "kliko/missing"} for i in range(30)}
    with pytest.raises(ImageError) as raised:
        await dry_run(tmp_path, fake, **steps)

    text = str(raised.value)
    assert text.startswith("steps 's0', 's1', 's2', 's3', 's4' and 25 more, image ")
    assert text.count("'s1'") == 1
    assert len(text) < 400


async def test_a_wrong_parameter_of_every_expansion_is_one_problem(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    with pytest.raises(ParameterError) as raised:
        await dry_run(tmp_path, fake, sweep=sweep("kliko/good", params={"y": 1}))

    text = str(raised.value)
    assert text.startswith("step 'sweep' (all 20 expansions) (image kliko/good): ")
    assert text.count("unknown parameter 'y'") == 1


async def test_problems_of_some_expansions_and_of_other_steps_stay_apart(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    # x comes from the matrix; three of its values are not integers, each its own problem.
    values = [1, "a", 2, "b", "c", 3]
    with pytest.raises(ChainError) as raised:
        await dry_run(
            tmp_path,
            fake,
            sweep={"image": "kliko/good", "matrix": {"x": values}},
            lone={"image": "kliko/good", "params": {"y": 1}},
            other={"image": "kliko/broken"},
        )

    text = str(raised.value)
    assert "5 problems were found before running" in text
    for value in ("a", "b", "c"):
        assert text.count(f"step 'sweep[x={value}]' (image kliko/good)") == 1
    assert "step 'lone' (image kliko/good): unknown parameter 'y'" in text
    assert "step 'other', image kliko/broken" in text


async def test_an_unknown_input_of_a_matrix_step_is_said_once(tmp_path: Path) -> None:
    steps = {"sweep": sweep("kliko/good", 6, inputs=["sweeep"]), "lone": {"image": "kliko/good"}}
    with pytest.raises(ChainError) as raised:
        parse_chain({"steps": steps}, source="chain.yml", base_dir=tmp_path)

    text = str(raised.value)
    assert text.count("has input 'sweeep'") == 1
    assert "step 'sweep' (all 6 expansions) has input 'sweeep'" in text
    assert "did you mean 'sweep'?" in text
