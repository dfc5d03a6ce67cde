"""``matrix:`` on a step: expansion at loading, names, include/exclude, value files, pairing with
``same-as``, and every way a matrix can be wrong; then planning and running on the fake runtime."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.cache.store import Cache
from kliko_async.engine.logsearch import find_step_log
from kliko_async.engine.plan import Plan
from kliko_async.errors import CacheError, ChainError, ParameterError
from kliko_async.model.chain import Chain, chain_json_schema, load_chain
from kliko_async.results import RunResult
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

IMAGER = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: weight, type: choice, choices: {natural: n, uniform: u, briggs: b}, initial: natural}
      - {name: robust, type: float, initial: 0.0}
"""

PLAIN = """\
schema_version: 3
io: split
sections: []
"""


def load(tmp_path: Path, text: str) -> Chain:
    path = tmp_path / "chain.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_chain(path)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ChainError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_one_step_per_combination_named_predictably_in_product_order(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          image:
            image: example/imager
            params: {cell: 2}
            matrix: {weight: [natural, uniform], robust: [0, 0.5]}
        """,
    )
    assert list(chain.steps) == [
        "image[weight=natural,robust=0]",
        "image[weight=natural,robust=0.5]",
        "image[weight=uniform,robust=0]",
        "image[weight=uniform,robust=0.5]",
    ]
    step = chain.steps["image[weight=uniform,robust=0.5]"]
    assert step.params == {"cell": 2, "weight": "uniform", "robust": 0.5}
    assert step.matrix is not None
    assert step.matrix.step == "image"
    assert step.matrix.values == {"weight": "uniform", "robust": 0.5}


def test_a_consumer_receives_every_expansion_in_its_own_folder(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          gen: {image: example/gen}
          image: {image: example/imager, inputs: [gen], matrix: {weight: [natural]}}
          report: {image: example/merge, inputs: [image, gen]}
        """,
    )
    assert chain.steps["image[weight=natural]"].inputs == ("gen",)
    assert chain.steps["image[weight=natural]"].inputs_in_folders is False
    report = chain.steps["report"]
    assert report.inputs == ("image[weight=natural]", "gen")
    assert report.inputs_in_folders is True  # even one expansion is a subfolder
    assert chain.select(["image"]) == ["image[weight=natural]"]
    assert chain.downstream("image") == {"report"}


def test_list_form_default_input_is_every_expansion_of_the_step_before(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          - {image: example/imager, matrix: {weight: [natural, uniform]}}
          - {image: example/merge}
        """,
    )
    assert chain.steps["merge"].inputs == ("imager[weight=natural]", "imager[weight=uniform]")


def test_name_template_and_index(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          image:
            image: example/imager
            matrix: {weight: [natural, uniform], name: "img-{index}-{weight}"}
        """,
    )
    assert list(chain.steps) == ["img-1-natural", "img-2-uniform"]


def test_exclude_and_include(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          image:
            image: example/imager
            matrix:
              weight: [natural, uniform]
              robust: [0, 1]
              exclude: [{weight: uniform, robust: 1}]
              include: [{weight: briggs, robust: 0.5}, {weight: natural, robust: 0}]
        """,
    )
    assert list(chain.steps) == [
        "image[weight=natural,robust=0]",
        "image[weight=natural,robust=1]",
        "image[weight=uniform,robust=0]",
        "image[weight=briggs,robust=0.5]",  # the repeated include is not added twice
    ]


def test_values_from_a_yaml_file_relative_to_the_chain_file(tmp_path: Path) -> None:
    (tmp_path / "seeds.yml").write_text("- 1\n- 2\n- 3\n")
    chain = load(
        tmp_path,
        """\
        steps:
          sim: {image: example/sim, matrix: {seed: {from-file: seeds.yml}}}
        """,
    )
    assert list(chain.steps) == ["sim[seed=1]", "sim[seed=2]", "sim[seed=3]"]


def test_same_as_pairs_one_to_one_through_a_chain_of_pairings(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          gen: {image: example/gen}
          image: {image: example/imager, inputs: [gen], matrix: {weight: [natural, uniform]}}
          restore: {image: example/restore, inputs: [image, gen], matrix: {same-as: image}}
          plot:
            image: example/plot
            inputs: [restore, image]
            matrix: {same-as: restore, name: "plot-{weight}"}
          report: {image: example/merge, inputs: [plot]}
        """,
    )
    restore = chain.steps["restore[weight=uniform]"]
    assert restore.inputs == ("image[weight=uniform]", "gen")
    assert restore.params == {}  # pairing does not pass the values on as parameters
    assert restore.inputs_in_folders is False
    assert restore.matrix is not None and restore.matrix.same_as == "image"
    assert chain.steps["plot-natural"].inputs == (
        "restore[weight=natural]",
        "image[weight=natural]",
    )
    assert chain.steps["report"].inputs == ("plot-natural", "plot-uniform")


@pytest.mark.parametrize("inputs", ["[a]", "[]"])
def test_same_as_a_step_it_does_not_read_is_refused(tmp_path: Path, inputs: str) -> None:
    message = load_error(
        tmp_path,
        f"""\
        steps:
          a: {{image: example/gen, matrix: {{n: [1, 2]}}}}
          b: {{image: example/gen, matrix: {{n: [1, 2, 3]}}}}
          c: {{image: example/upper, inputs: {inputs}, matrix: {{same-as: b}}}}
        """,
    )
    listed = "'a'" if inputs == "[a]" else "none"
    assert "step 'c': matrix.same-as 'b' pairs" in message
    assert f"its inputs ({listed}) do not include 'b' or a step paired with it" in message


def test_same_as_may_read_a_step_paired_with_the_same_values(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          image: {image: example/imager, matrix: {weight: [natural, uniform]}}
          restore: {image: example/restore, inputs: [image], matrix: {same-as: image}}
          plot: {image: example/plot, inputs: [restore], matrix: {same-as: image}}
        """,
    )
    assert chain.steps["plot[weight=uniform]"].inputs == ("restore[weight=uniform]",)


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ("{weight: natural}", "matrix.weight: is a string; give a list of values"),
        ("{weight: []}", "matrix.weight: is an empty list"),
        ("{}", "matrix: lists no parameter"),
        ("[natural]", "matrix: Input should be a valid dictionary"),
        ("{weight: [a, b, a]}", 'matrix.weight lists "a" more than once'),
        (
            "{weight: [a/b]}",
            "cannot name a step: name 'image[weight=a/b]' is not safe as a folder name",
        ),
        ("{weight: ['a b']}", "give matrix.name a template such as 'image-{index}'"),
        ("{weight: [a, b], name: img}", "gives the same name 'img' to several combinations"),
        ("{weight: [a], name: 'img-{wieght}'}", "uses 'wieght', which is not a matrix parameter"),
        ("{weight: [a], name: 'img-{'}", "is not a template"),
        ("{weight: [a, b], exclude: [{weight: c}]}", 'exclude #1 {"weight": "c"} matches no'),
        ("{weight: [a], exclude: [{wieght: a}]}", "names 'wieght' (did you mean 'weight'?)"),
        ("{weight: [a], exclude: [{weight: a}]}", "'exclude' leaves no combination"),
        ("{weight: [a], include: [{}]}", "include #1 {}: give a mapping of parameter names"),
        ("{weight: [a], same-as: gen}", "'same-as' pairs with another matrix step's values"),
        ("{same-as: gne}", "names 'gne', but there is no such step (did you mean 'gen'?)"),
        ("{same-as: gen}", "names 'gen', which has no matrix"),
        ("{same-as: image}", "the pairings form a loop: image -> image"),
        ("{seed: {from-file: missing.yml}}", "from-file 'missing.yml'"),
        ("{seed: {from-file: seeds.txt}}", "holds a string; it must hold a non-empty YAML list"),
        ("{seed: {from-file: bad.yml}}", "from-file 'bad.yml' is not valid YAML at line 2"),
        ("{seed: {from: seeds.txt}}", "matrix.seed: is a mapping; give a list of values"),
        ("{'bad name': [1]}", "'bad name' is not a parameter name"),
        ("{cell: [1, 2]}", "parameter(s) 'cell' are given both in 'params' and in 'matrix'"),
    ],
)
def test_a_wrong_matrix_is_one_clear_error(tmp_path: Path, matrix: str, expected: str) -> None:
    (tmp_path / "seeds.txt").write_text("1\n2\n")
    (tmp_path / "bad.yml").write_text("[1, 2\n")
    message = load_error(
        tmp_path,
        f"""\
        steps:
          gen: {{image: example/gen}}
          image: {{image: example/imager, params: {{cell: 2}}, matrix: {matrix}}}
        """,
    )
    assert str(tmp_path / "chain.yml") in message
    assert "step 'image'" in message
    assert expected in message


def test_expansion_names_must_not_clash_with_other_steps(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """\
        steps:
          a: {image: example/gen, matrix: {n: [1], name: b}}
          b: {image: example/gen}
        """,
    )
    assert "expansion 'b' has the same name as step 'b'" in message


def test_force_and_unknown_names_know_matrix_steps(tmp_path: Path) -> None:
    chain = load(
        tmp_path,
        """\
        steps:
          image: {image: example/imager, matrix: {weight: [natural, uniform]}}
        """,
    )
    assert chain.select(["image"]) == ["image[weight=natural]", "image[weight=uniform]"]
    with pytest.raises(ChainError, match=r"no step named 'imag' \(did you mean 'image'"):
        chain.select(["imag"])


def test_the_json_schema_describes_matrix() -> None:
    schema = chain_json_schema()
    matrix = schema["$defs"]["MatrixSpec"]
    assert set(matrix["properties"]) == {"include", "exclude", "name", "same-as"}
    values = matrix["additionalProperties"]["anyOf"]
    assert {"type": "array", "minItems": 1} in values
    assert values[1]["required"] == ["from-file"]
    step = schema["$defs"]["StepSpec"]["properties"]["matrix"]
    assert {"$ref": "#/$defs/MatrixSpec"} in step["anyOf"]


# ---- planning and running on the fake runtime ------------------------------------------------


async def write_weight(container: FakeContainer) -> int:
    params = json.loads(container.path("/parameters.json").read_text())
    (container.path("/output") / "image.txt").write_text(f"{params['weight']} {params['robust']}")
    return 0


async def list_inputs(container: FakeContainer) -> int:
    found = sorted(
        f"{mount.target}/{path.name}={path.read_text()}"
        for mount in container.job.mounts
        if mount.target.startswith("/input")
        for path in mount.source.glob("*.txt")
    )
    (container.path("/output") / "seen.txt").write_text("\n".join(found))
    return 0


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/imager", IMAGER, write_weight)
    runtime.add_image("example/merge", PLAIN, list_inputs)
    return runtime


MATRIX_CHAIN = """\
steps:
  image:
    image: example/imager
    matrix: {{weight: [{weights}], robust: [0.5]}}
  report: {{image: example/merge, inputs: [image]}}
"""


@pytest.mark.anyio
async def test_every_combination_is_validated_against_kliko_yml(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = load(tmp_path, MATRIX_CHAIN.format(weights="natural, robust, fancy"))
    with pytest.raises(ChainError) as info:
        await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "2 problems" in message
    assert "step 'image[weight=robust,robust=0.5]'" in message
    assert "step 'image[weight=fancy,robust=0.5]'" in message
    assert "'natural]" not in message
    one = load(tmp_path, MATRIX_CHAIN.format(weights="natural, fancy"))
    with pytest.raises(ParameterError, match=r"image\[weight=fancy,robust=0.5\]"):
        await api.dry_run(one, runtime=fake, cache_dir=tmp_path / "cache")


@pytest.mark.anyio
async def test_changing_one_value_reruns_only_that_expansion_and_its_consumers(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    cache = tmp_path / "cache"
    first = await api.run(
        load(tmp_path, MATRIX_CHAIN.format(weights="natural, uniform")),
        runtime=fake,
        cache_dir=cache,
    )
    assert first.ok
    seen = (first.steps["report"].output / "seen.txt").read_text()  # type: ignore[operator]
    assert seen.splitlines() == [
        "/input/image[weight=natural,robust=0.5]/image.txt=natural 0.5",
        "/input/image[weight=uniform,robust=0.5]/image.txt=uniform 0.5",
    ]
    second = await api.run(
        load(tmp_path, MATRIX_CHAIN.format(weights="natural, briggs")),
        runtime=fake,
        cache_dir=cache,
    )
    states = {name: step.state for name, step in second.steps.items()}
    assert states == {
        "image[weight=natural,robust=0.5]": "cached",
        "image[weight=briggs,robust=0.5]": "done",
        "report": "done",
    }
    third = await api.run(
        load(tmp_path, MATRIX_CHAIN.format(weights="natural")), runtime=fake, cache_dir=cache
    )
    assert third.steps["image[weight=natural,robust=0.5]"].state == "cached"
    seen = (third.steps["report"].output / "seen.txt").read_text()  # type: ignore[operator]
    assert seen == "/input/image[weight=natural,robust=0.5]/image.txt=natural 0.5"


@pytest.mark.anyio
async def test_a_1000_way_matrix_plans_a_step_and_a_key_per_combination(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """Its speed (and that of a 10,000-way one) is measured by benchmarks/matrix.py."""
    (tmp_path / "robust.yml").write_text("".join(f"- {n / 100}\n" for n in range(334)))
    chain = load(
        tmp_path,
        """\
        steps:
          image:
            image: example/imager
            matrix: {weight: [natural, uniform, briggs], robust: {from-file: robust.yml}}
          report: {image: example/merge, inputs: [image]}
        """,
    )
    plan = await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    assert len(plan.order) == 3 * 334 + 1
    assert len(set(step.key for step in plan.steps.values())) == len(plan.order)


async def fail_for_uniform(container: FakeContainer) -> int:
    params = json.loads(container.path("/parameters.json").read_text())
    container.log(f"imaging {params['weight']}")
    return 3 if params["weight"] == "uniform" else 0


async def run_with_a_failed_expansion(tmp_path: Path) -> tuple[Cache, Plan, RunResult]:
    """The matrix chain run once (--keep-going) with ``image[weight=uniform,...]`` failing, so
    that ``report`` is skipped; its cache, its plan as it is now, and the run's result."""
    runtime = FakeRuntime()
    runtime.add_image("example/imager", IMAGER, fail_for_uniform)
    runtime.add_image("example/merge", PLAIN, list_inputs)
    chain = load(tmp_path, MATRIX_CHAIN.format(weights="natural, uniform"))
    cache = Cache(tmp_path / "cache")
    result = await api.run(chain, runtime=runtime, cache_dir=cache.root, keep_going=True)
    plan = await api.dry_run(chain, runtime=runtime, cache_dir=cache.root)
    return cache, plan, result


@pytest.mark.anyio
async def test_the_log_of_a_failed_expansion_is_found_by_its_name(tmp_path: Path) -> None:
    cache, plan, result = await run_with_a_failed_expansion(tmp_path)
    name = "image[weight=uniform,robust=0.5]"
    assert result.steps[name].state == "failed"
    # '[...]' is not a glob pattern here: the log of exactly this expansion.
    assert find_step_log(cache, plan, name).read_text().strip().endswith("imaging uniform")


@pytest.mark.anyio
async def test_asking_for_the_log_of_a_matrix_step_names_one_of_its_expansions(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    runtime.add_image("example/imager", IMAGER, fail_for_uniform)
    runtime.add_image("example/merge", PLAIN, list_inputs)
    chain = load(tmp_path, MATRIX_CHAIN.format(weights="natural, uniform"))
    plan = await api.dry_run(chain, runtime=runtime, cache_dir=tmp_path / "cache")
    cache = Cache(tmp_path / "cache")

    with pytest.raises(ParameterError) as whole:
        find_step_log(cache, plan, "image")
    assert str(whole.value) == (
        f"{plan.source}: 'image' is a matrix step of 2 expansions, each with its own log. "
        "Name one, such as 'image[weight=natural,robust=0.5]' (quoted in the shell)."
    )
    with pytest.raises(ParameterError, match=r"the matrix step 'image' has no such expansion"):
        find_step_log(cache, plan, "image[weight=briggs]")
    with pytest.raises(ParameterError) as unknown:
        find_step_log(cache, plan, "imag")
    # Each matrix step once, not each of its expansions.
    assert str(unknown.value).endswith(
        "no step named 'imag' (did you mean 'image'?). Steps: image (2 expansions), report."
    )


@pytest.mark.anyio
async def test_a_lone_input_in_its_own_folder_has_another_key_than_a_lone_input(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """A consumer of a one-value matrix sees /input/<expansion>/; one that names the expansion
    itself sees /input: different outputs, so the keys must differ."""
    expansion = "image[weight=natural,robust=0.5]"
    of_matrix = load(tmp_path, MATRIX_CHAIN.format(weights="natural"))
    named = load(
        tmp_path,
        MATRIX_CHAIN.format(weights="natural").replace(
            "inputs: [image]", f"inputs: ['{expansion}']"
        ),
    )
    assert of_matrix.steps["report"].inputs == named.steps["report"].inputs == (expansion,)
    plans = [
        await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
        for chain in (of_matrix, named)
    ]
    assert plans[0].steps[expansion].key == plans[1].steps[expansion].key
    upstream = plans[0].steps[expansion].key
    in_folder, whole = (plan.steps["report"].ingredients for plan in plans)
    assert (in_folder.input_layout, in_folder.inputs) == ("folders", {expansion: upstream})
    assert (whole.input_layout, whole.inputs) == ("whole", {"/input": upstream})
    assert plans[0].steps["report"].key != plans[1].steps["report"].key


@pytest.mark.anyio
async def test_force_with_the_matrix_steps_name_reruns_every_expansion(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = load(tmp_path, MATRIX_CHAIN.format(weights="natural, uniform"))
    cache = tmp_path / "cache"
    assert (await api.run(chain, runtime=fake, cache_dir=cache)).ok
    plan = await api.dry_run(chain, runtime=fake, cache_dir=cache, force=["image"])
    assert {name: step.forced for name, step in plan.steps.items()} == {
        "image[weight=natural,robust=0.5]": True,
        "image[weight=uniform,robust=0.5]": True,
        "report": True,
    }
    with pytest.raises(ChainError, match="--force names unknown step"):
        await api.dry_run(chain, runtime=fake, cache_dir=cache, force=["imag"])


@pytest.mark.anyio
async def test_the_log_of_a_step_skipped_after_a_failed_input_names_that_input(
    tmp_path: Path,
) -> None:
    """It did not run: not "run the chain first" (it was run), but which input stopped it and
    how to see why."""
    cache, plan, result = await run_with_a_failed_expansion(tmp_path)
    assert result.steps["report"].state == "skipped"

    with pytest.raises(CacheError) as skipped:
        find_step_log(cache, plan, "report")
    failed = "image[weight=uniform,robust=0.5]"
    assert f"since its input '{failed}' has not finished as it is now" in str(skipped.value)
    assert str(skipped.value).endswith(
        f"See why '{failed}' failed: kliko-async logs {plan.source} '{failed}'."
    )
    assert "Run the chain first" not in str(skipped.value)
