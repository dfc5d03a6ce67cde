"""``why`` / ``--explain`` on the fake runtime: which entry a step would have matched, every kind
of differing ingredient in words, changed inputs chased upstream, and cached steps' entries."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.cache.entry import Manifest
from kliko_async.cache.key import KeyIngredients
from kliko_async.engine.explain import ManifestIndex, StepExplanation
from kliko_async.model.chain import Chain, load_chain
from kliko_async.runtime.fake import FakeRuntime

pytestmark = pytest.mark.anyio

TEXT_YML = """\
schema_version: 3
io: {io}
sections:
  - name: main
    fields:
      - {{name: text, type: str, initial: hello}}
      - {{name: model, type: file}}
"""

CHAIN = """\
steps:
  gen:
    image: example/text
    params: {params}
    env: {env}
  mid: {{image: example/text, inputs: [gen]}}
  last: {{image: example/text, inputs: [mid]}}
"""


def fake_with(io: str = "split") -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/text", TEXT_YML.format(io=io))
    return runtime


def chain(tmp_path: Path, params: str = "{text: a}", env: str = "{}") -> Chain:
    path = tmp_path / "chain.yml"
    path.write_text(CHAIN.format(params=params, env=env))
    return load_chain(path)


async def why(
    tmp_path: Path, runtime: FakeRuntime, the_chain: Chain, *steps: str, **options: object
) -> dict[str, StepExplanation]:
    found = await api.explain(
        the_chain, steps, runtime=runtime, cache_dir=tmp_path / "cache", **options
    )
    return {explanation.step: explanation for explanation in found}


async def test_a_step_whose_attempt_failed_did_not_never_run(tmp_path: Path) -> None:
    async def fail(container: object) -> int:
        return 3

    fake = FakeRuntime()
    fake.add_image("example/text", TEXT_YML.format(io="split"), fail)
    result = await api.run(chain(tmp_path), runtime=fake, cache_dir=tmp_path / "cache")
    assert result.steps["gen"].state == "failed"
    log = result.steps["gen"].log_path

    found = await why(tmp_path, fake, chain(tmp_path))

    assert found["gen"].failed_log == str(log)
    assert found["gen"].lines() == [
        f"gen: would run: never finished well (an attempt failed; its log: {log})"
    ]
    assert found["mid"].reason == "never ran"  # skipped: no attempt of its own


async def test_never_ran_then_cached_with_its_entry_run_and_duration(tmp_path: Path) -> None:
    fake = fake_with()
    before = await why(tmp_path, fake, chain(tmp_path))
    assert [e.reason for e in before.values()] == ["never ran"] * 3
    assert before["gen"].lines() == ["gen: would run: never ran"]

    result = await api.run(chain(tmp_path), runtime=fake, cache_dir=tmp_path / "cache")
    after = await why(tmp_path, fake, chain(tmp_path), "mid")
    assert list(after) == ["mid"]
    mid = after["mid"]
    assert mid.state == "cached"
    assert mid.entry is not None
    assert mid.entry.key == result.steps["mid"].key
    assert mid.entry.run_id == result.run_id
    assert mid.entry.duration_s >= 0
    assert mid.lines()[0].startswith(f"mid: cached: entry {mid.entry.key[:12]} made ")
    assert f"by run {result.run_id}, ran " in mid.lines()[0]


async def test_a_parameter_change_is_chased_to_its_root_cause(tmp_path: Path) -> None:
    fake = fake_with()
    await api.run(chain(tmp_path), runtime=fake, cache_dir=tmp_path / "cache")
    found = await why(tmp_path, fake, chain(tmp_path, params="{text: b}"))
    assert found["gen"].reason == "parameter text: 'a' -> 'b'"
    assert found["mid"].reason == "input gen: re-runs (parameter text: 'a' -> 'b')"
    assert found["last"].reason == "input mid: re-runs (gen: parameter text: 'a' -> 'b')"
    assert [(c.step, c.text) for c in found["last"].changes[0].root_causes] == [
        ("gen", "parameter text: 'a' -> 'b'")
    ]
    assert found["gen"].entry is not None
    assert found["gen"].lines()[1].startswith("  it would have matched entry ")


async def test_env_added_changed_and_removed(tmp_path: Path) -> None:
    fake = fake_with()
    first = chain(tmp_path, env="{A: '1', B: x}")
    await api.run(first, runtime=fake, cache_dir=tmp_path / "cache")
    found = await why(tmp_path, fake, chain(tmp_path, env="{A: '2', C: y}"), "gen")
    assert found["gen"].reason == "env A: '1' -> '2'; env B removed; env C added"


async def test_an_image_rebuilt_with_another_io(tmp_path: Path) -> None:
    await api.run(chain(tmp_path), runtime=fake_with("split"), cache_dir=tmp_path / "cache")
    rebuilt = fake_with("join")
    old = fake_with("split").images["example/text"].id
    new = rebuilt.images["example/text"].id
    found = await why(tmp_path, rebuilt, chain(tmp_path), "gen")
    assert found["gen"].reason == (
        f"image example/text: rebuilt (sha256:{old[7:19]}.. -> sha256:{new[7:19]}..); "
        "io: split -> join"
    )


async def test_a_file_parameter_whose_content_changed(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"first")
    fake = fake_with()
    the_chain = chain(tmp_path, params="{text: a, model: model.bin}")
    await api.run(the_chain, runtime=fake, cache_dir=tmp_path / "cache")
    model.write_bytes(b"second")
    found = await why(tmp_path, fake, the_chain, "gen")
    old = hashlib.sha256(b"first").hexdigest()[:12]
    new = hashlib.sha256(b"second").hexdigest()[:12]
    assert found["gen"].reason == (
        f"file parameter model: content changed (sha256 {old}.. -> {new}..)"
    )


async def test_forced_steps_say_so(tmp_path: Path) -> None:
    fake = fake_with()
    await api.run(chain(tmp_path), runtime=fake, cache_dir=tmp_path / "cache")
    found = await why(tmp_path, fake, chain(tmp_path), force=["mid"])
    assert found["gen"].state == "cached"
    assert found["mid"].forced and found["mid"].reason == "forced (--force or --no-cache)"
    assert found["mid"].lines()[0] == "mid: would run (forced): forced (--force or --no-cache)"


async def test_the_json_form_round_trips(tmp_path: Path) -> None:
    fake = fake_with()
    await api.run(chain(tmp_path), runtime=fake, cache_dir=tmp_path / "cache")
    found = await why(tmp_path, fake, chain(tmp_path, params="{text: b}"), "last")
    data = json.loads(found["last"].model_dump_json())
    assert data["kind"] == "explanation"
    assert data["changes"][0]["ingredient"] == "input"
    assert data["changes"][0]["root_causes"] == [
        {"step": "gen", "text": "parameter text: 'a' -> 'b'"}
    ]
    assert StepExplanation.model_validate(data) == found["last"]


async def test_a_matrix_step_name_means_every_expansion(tmp_path: Path) -> None:
    path = tmp_path / "chain.yml"
    path.write_text(
        textwrap.dedent(
            """\
            steps:
              gen: {image: example/text, matrix: {text: [a, b]}}
            """
        )
    )
    found = await why(tmp_path, fake_with(), load_chain(path), "gen")
    assert list(found) == ["gen[text=a]", "gen[text=b]"]


def manifest(step: str, finished: int, **changes: object) -> Manifest:
    ingredients = KeyIngredients(
        image_id="sha256:" + "1" * 64,
        command=("/kliko",),
        io="split",
        parameters={"n": 5},
        file_hashes={},
        inputs={},
        input_layout="whole",
    ).model_copy(update=changes)
    moment = datetime.fromtimestamp(finished, UTC)
    return Manifest(
        key=f"{finished:064x}",
        step=step,
        image="example/gen",
        ingredients=ingredients,
        run_id=f"run{finished}",
        started_at=moment,
        finished_at=moment,
        duration_s=1.0,
        exit_code=0,
    )


def test_the_closest_entry_is_the_one_with_fewest_differences_then_the_newest() -> None:
    now = manifest("gen", 0).ingredients.model_copy(update={"parameters": {"n": 7}})
    index = ManifestIndex(
        [
            manifest("gen", 1, parameters={"n": 5}, env={"A": "1"}),
            manifest("gen", 2, parameters={"n": 5}),
            manifest("gen", 3, parameters={"n": 6}),
            manifest("other", 4, parameters={"n": 7}),
        ]
    )
    found = index.closest("gen", now, "example/gen")
    assert found is not None
    entry, changes = found
    assert entry.run_id == "run3"
    assert [c.text for c in changes] == ["parameter n: 6 -> 7"]
    assert index.closest("never", now, "example/gen") is None


def test_a_different_command_and_a_renamed_image() -> None:
    now = manifest("gen", 0).ingredients.model_copy(
        update={"command": ("/kliko",), "image_id": "sha256:" + "2" * 64}
    )
    index = ManifestIndex([manifest("gen", 1, command=("/old", "run"))])
    found = index.closest("gen", now, "example/gen2")
    assert found is not None
    assert [c.text for c in found[1]] == [
        "image: example/gen -> example/gen2 (sha256:111111111111.. -> sha256:222222222222..)",
        "command: /old run -> /kliko",
    ]


def test_a_lone_input_moved_into_a_folder_says_the_layout_changed() -> None:
    """A lone input is keyed by where it is (/input); in a folder, by the folder's name."""
    upstream = "a" * 64
    index = ManifestIndex([manifest("use", 1, inputs={"/input": upstream})])
    now = manifest("use", 0, inputs={"gen[n=1]": upstream}, input_layout="folders")
    found = index.closest("use", now.ingredients, "example/gen")
    assert found is not None
    assert [change.text for change in found[1]] == [
        "input layout: all of /input -> a folder per input",
        "input /input removed",
        "input gen[n=1] added",
    ]
