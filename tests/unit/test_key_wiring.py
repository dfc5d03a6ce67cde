"""The cache key as planning wires it: every ingredient reaches the key, and only those.

``tests/unit/test_cache.py`` shows that :func:`cache_key` hashes each field; these tests show that
:func:`plan_chain` fills each field from the right place, so that deleting any one ingredient from
the wiring in ``plan.py`` fails a test here. The chain, on the fake runtime::

    gen (a file parameter, env) -> use
    solo
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from kliko_async import api
from kliko_async.cache import key
from kliko_async.cache.store import Cache
from kliko_async.engine import plan
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeImage, FakeRuntime

pytestmark = pytest.mark.anyio

YML = """\
schema_version: 3
io: {io}
sections:
  - name: s
    fields:
      - {{name: n, type: int, initial: 1}}
      - {{name: model, type: file, required: false}}
"""


class Project:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.fake = FakeRuntime()
        self.add("gen", "sha256:" + "1" * 64)
        self.add("use", "sha256:" + "2" * 64)
        self.model = tmp_path / "model.bin"
        self.model.write_bytes(b"weights v1")
        self.steps: dict[str, dict[str, Any]] = {
            "gen": {"image": "gen", "params": {"n": 3, "model": "model.bin"}, "env": {"A": "1"}},
            "use": {"image": "use", "inputs": ["gen"]},
            "solo": {"image": "use", "params": {"n": 9}},
        }
        self.plans = 0

    def add(self, ref: str, image_id: str, io: str = "split") -> None:
        image = FakeImage(ref=ref, kliko_yml=YML.format(io=io), id=image_id)
        self.fake.images[ref] = image
        self.fake.images[image_id] = image

    async def plan(self) -> plan.Plan:
        """The chain as planned now (a fresh kliko.yml memo each time)."""
        self.plans += 1
        chain = parse_chain(
            {"steps": self.steps}, source=str(self.tmp_path / "chain.yaml"), base_dir=self.tmp_path
        )
        return await api.dry_run(
            chain, runtime=self.fake, cache_dir=self.tmp_path / f"cache{self.plans}"
        )

    async def keys(self) -> dict[str, str]:
        """The key of every step as planned now."""
        return {name: step.key for name, step in (await self.plan()).steps.items()}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


async def changed(project: Project, before: dict[str, str]) -> set[str]:
    after = await project.keys()
    return {name for name in before if after[name] != before[name]}


async def test_planning_twice_gives_the_same_keys(project: Project) -> None:
    assert await changed(project, await project.keys()) == set()


async def test_image_id(project: Project) -> None:
    before = await project.keys()
    project.add("gen", "sha256:" + "3" * 64)  # rebuilt under the same tag
    assert await changed(project, before) == {"gen", "use"}


async def test_io_mode(project: Project) -> None:
    before = await project.keys()
    project.add("gen", "sha256:" + "1" * 64, io="join")  # same ID: only the mode differs
    assert await changed(project, before) == {"gen", "use"}


async def test_command(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await project.keys()
    monkeypatch.setattr(plan, "KLIKO_COMMAND", ("/bin/sh", "/kliko"))
    assert await changed(project, before) == {"gen", "use", "solo"}


async def test_a_parameter(project: Project) -> None:
    before = await project.keys()
    project.steps["gen"]["params"]["n"] = 4
    assert await changed(project, before) == {"gen", "use"}


async def test_a_default_that_fills_in_is_a_parameter_too(project: Project) -> None:
    before = await project.keys()
    project.steps["solo"]["params"] = {}
    assert await changed(project, before) == {"solo"}  # n: 9 -> the initial 1


async def test_file_content(project: Project) -> None:
    before = await project.keys()
    project.model.write_bytes(b"weights v2")
    assert await changed(project, before) == {"gen", "use"}


async def test_file_path_with_the_same_content_is_the_same_key(project: Project) -> None:
    before = await project.keys()
    (project.tmp_path / "copy.bin").write_bytes(project.model.read_bytes())
    project.steps["gen"]["params"]["model"] = "copy.bin"
    assert await changed(project, before) == set()


async def test_env(project: Project) -> None:
    before = await project.keys()
    project.steps["gen"]["env"] = {"A": "2"}
    assert await changed(project, before) == {"gen", "use"}


async def test_which_step_the_lone_input_is(project: Project) -> None:
    before = await project.keys()
    project.steps["use"]["inputs"] = ["solo"]
    assert await changed(project, before) == {"use"}


async def test_the_name_of_a_lone_input_is_not_an_ingredient(project: Project) -> None:
    """A lone input is all of /input: the container never sees its step's name."""
    before = await project.keys()
    project.steps["renamed"] = project.steps.pop("gen")
    project.steps["use"]["inputs"] = ["renamed"]
    after = await project.keys()
    assert after["use"] == before["use"]
    assert after["renamed"] == before["gen"]


async def test_the_names_of_several_inputs_are_ingredients(project: Project) -> None:
    """Several inputs are in folders named after their steps, which the container sees."""
    project.steps["use"]["inputs"] = ["gen", "solo"]
    before = await project.keys()
    project.steps["renamed"] = project.steps.pop("gen")
    project.steps["use"]["inputs"] = ["renamed", "solo"]
    after = await project.keys()
    assert after["use"] != before["use"]
    assert after["renamed"] == before["gen"]


async def test_the_input_layout(project: Project) -> None:
    """A consumer of a one-value matrix has its lone input in a folder, named after it."""
    project.steps["gen"]["matrix"] = {"n": [3]}
    project.steps["gen"]["params"].pop("n")
    keys = await project.keys()
    planned = await project.plan()
    use = planned.steps["use"].ingredients
    assert use.input_layout == "folders"
    assert use.inputs == {"gen[n=3]": keys["gen[n=3]"]}
    assert planned.steps["solo"].ingredients.input_layout == "whole"
    project.steps["gen"]["params"]["n"] = 3
    del project.steps["gen"]["matrix"]
    plain = await project.plan()
    assert plain.steps["gen"].key == keys["gen[n=3]"], "the same upstream result"
    assert plain.steps["use"].ingredients.inputs == {"/input": keys["gen[n=3]"]}
    assert plain.steps["use"].ingredients.input_layout == "whole"
    assert plain.steps["use"].key != keys["use"]


async def test_format_version(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    before = await project.keys()
    monkeypatch.setattr(key, "CACHE_FORMAT_VERSION", key.CACHE_FORMAT_VERSION + 1)
    assert await changed(project, before) == {"gen", "use", "solo"}


async def test_user_is_not_an_ingredient(project: Project) -> None:
    before = await project.keys()
    project.steps["gen"]["user"] = "1234:1234"
    assert await changed(project, before) == set()


async def test_the_manifest_records_every_ingredient_as_planned(
    project: Project, tmp_path: Path
) -> None:
    chain = parse_chain(
        {"steps": project.steps}, source=str(tmp_path / "c.yaml"), base_dir=tmp_path
    )
    async with api.open_run(chain, runtime=project.fake, cache_dir=tmp_path / "cache") as run:
        pass
    assert run.result.ok and run.plan is not None
    entries = {e.manifest.step: e.manifest for e in Cache(tmp_path / "cache").entries()}
    for name, planned in run.plan.steps.items():
        assert entries[name].ingredients == planned.ingredients
        assert entries[name].run_id == run.result.run_id
    gen = entries["gen"].ingredients
    assert gen.env == {"A": "1"}
    assert gen.command == ("/kliko",)
    assert gen.file_hashes == {"/param_files/model": hashlib.sha256(b"weights v1").hexdigest()}
    assert entries["use"].ingredients.inputs == {"/input": entries["gen"].key}
    assert entries["use"].ingredients.input_layout == "whole"


async def test_the_container_sees_the_copy_that_was_hashed(
    project: Project, tmp_path: Path
) -> None:
    """A file parameter edited after planning (here by an earlier step, while the chain runs)
    changes neither the key nor what the container reads: both are the copy made at planning."""
    seen: list[bytes] = []

    async def edits_model(container: Any) -> int:
        project.model.write_bytes(b"edited after planning")
        return 0

    async def reads_model(container: Any) -> int:
        seen.append((container.path("/param_files") / "model").read_bytes())
        return 0

    project.add("first", "sha256:" + "4" * 64)
    project.fake.images["first"].program = edits_model
    project.fake.images["gen"].program = reads_model
    project.steps["first"] = {"image": "first"}
    project.steps["gen"]["inputs"] = ["first"]
    chain = parse_chain(
        {"steps": project.steps}, source=str(tmp_path / "c.yaml"), base_dir=tmp_path
    )
    async with api.open_run(chain, runtime=project.fake, cache_dir=tmp_path / "cache") as run:
        pass
    assert run.result.ok and run.plan is not None
    assert seen == [b"weights v1"]
    hashes = run.plan.steps["gen"].ingredients.file_hashes
    assert hashes == {"/param_files/model": hashlib.sha256(b"weights v1").hexdigest()}
    assert not any((tmp_path / "cache" / "tmp").iterdir()), "the run's copies are deleted"
