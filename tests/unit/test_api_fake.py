"""The library API (``run``, ``open_run``, ``dry_run``) as an application uses it, on the fake
runtime: chain files, results, exported outputs, errors and the caller's own exceptions."""

from __future__ import annotations

import json
import os
import stat
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from kliko_async import api
from kliko_async.cache import paramfiles
from kliko_async.cache.entry import LOG, MANIFEST, OUTPUT
from kliko_async.cache.logfiles import log_content
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import verify
from kliko_async.errors import ParameterError, RunFailed, SpecError, StepFailure
from kliko_async.events import Event, ImageBuilding, ImageBuilt, RunFinished, StepCancelled
from kliko_async.model.chain import Chain, chain_from_pairs, parse_chain
from kliko_async.runtime.base import LABEL_PREFIX
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: text, type: str, initial: hello}
      - {name: exit, type: int, initial: 0}
      - {name: delay, type: float, initial: 0.0}
"""


async def write_text(container: FakeContainer) -> int:
    """Write /output/text.txt from the ``text`` parameter, then sleep and exit as asked."""
    params = json.loads(container.path("/parameters.json").read_text())
    (container.path("/output") / "text.txt").write_text(params["text"])
    container.log(f"wrote {params['text']}")
    await anyio.sleep(params["delay"])
    code: int = params["exit"]
    return code


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/text", KLIKO_YML, write_text)
    return runtime


def read(path: str) -> str:
    return Path(path).read_text()


def chain_of(tmp_path: Path, **steps: dict[str, object]) -> Chain:
    return parse_chain({"steps": steps}, source=str(tmp_path / "chain.yml"), base_dir=tmp_path)


async def test_a_chain_file_path_runs_and_its_build_steps_are_built(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "kliko.yml").write_text(KLIKO_YML)
    chain_file = tmp_path / "chain.yml"
    chain_file.write_text(
        textwrap.dedent(
            """\
            steps:
              - image: example/text
                params: {text: first}
              - build: tool
            """
        )
    )
    events: list[Event] = []

    result = await api.run(
        chain_file, runtime=fake, cache_dir=tmp_path / "cache", on_event=events.append
    )

    assert result.ok
    assert list(result.steps) == ["text", "tool"]
    (building,) = [e for e in events if isinstance(e, ImageBuilding)]
    (built,) = [e for e in events if isinstance(e, ImageBuilt)]
    assert building.context == built.context == str(tmp_path / "tool")
    assert built.image_id == fake.images[str(tmp_path / "tool")].id
    output = result.steps["tool"].output
    assert output is not None
    assert (output / "text.txt").read_text() == "first"  # the default program copies /input


async def test_out_exports_writable_copies_and_leaves_the_cache_intact(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(
        tmp_path,
        a={"image": "example/text", "params": {"text": "A"}},
        broken={"image": "example/text", "params": {"exit": 1}},
    )
    out = tmp_path / "results"

    result = await api.run(
        chain, runtime=fake, cache_dir=tmp_path / "cache", out=out, keep_going=True
    )

    assert sorted(p.name for p in out.iterdir()) == ["a"]  # nothing for the failed step
    exported = out / "a" / "text.txt"
    assert exported.read_text() == "A"
    assert stat.S_IMODE(exported.stat().st_mode) & 0o200
    exported.write_text("edited")
    output = result.steps["a"].output
    assert output is not None
    assert (output / "text.txt").read_text() == "A"
    assert verify(Cache(tmp_path / "cache")) == []


async def test_dry_run_shows_the_cache_state_without_starting_a_container(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(
        tmp_path,
        a={"image": "example/text"},
        b={"image": "example/text", "inputs": ["a"], "params": {"text": "b"}},
    )
    before = await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    assert before.to_run == ["a", "b"]

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    jobs = len(fake.jobs)
    after = await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    forced = await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache", force=["b"])

    assert after.to_run == []
    assert {n: s.key for n, s in after.steps.items()} == {n: s.key for n, s in result.steps.items()}
    assert forced.to_run == ["b"]
    assert len(fake.jobs) == jobs


async def test_raise_for_failures_says_why_each_step_failed_with_its_last_lines_and_log(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, bad={"image": "example/text", "params": {"exit": 4}})

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache")

    assert not result.ok
    with pytest.raises(RunFailed) as info:
        result.raise_for_failures()
    (failure,) = info.value.failures
    assert failure.step == "bad"
    assert failure.reason == "exited with code 4"
    assert failure.exit_code == 4
    assert failure.last_lines == ("wrote hello",)
    assert failure.log_path is not None
    assert log_content(Path(failure.log_path)) == b"wrote hello\n"
    message = str(info.value)
    assert message.startswith("1 step failed:\n  step 'bad': exited with code 4")
    assert "    | wrote hello\n" in message
    assert f"Its full log is in {failure.log_path}" in message
    # after the quoted lines, on a line of its own: it began with ". Its full log" (run_chain)
    assert message.endswith(f"    | wrote hello\n  Its full log is in {failure.log_path}.")


async def test_raise_for_failures_says_once_how_many_expansions_failed_alike(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    # Every expansion writes "wrote hello" and exits 4; "odd" writes another line.
    delays = [i / 10_000 for i in range(40)]
    matrix = {"delay": delays, "name": "try-{index}"}  # named by a template: no brackets
    sweep = {"image": "example/text", "params": {"exit": 4}, "matrix": matrix}
    odd = {"image": "example/text", "params": {"exit": 4, "text": "odd"}}
    chain = chain_of(tmp_path, sweep=sweep, odd=odd)

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", keep_going=True)

    with pytest.raises(RunFailed) as info:
        result.raise_for_failures()
    assert len(info.value.failures) == 41  # each failure's details stay there
    message = str(info.value)
    assert message.startswith(
        "41 steps failed:\n  step 'sweep' (40 expansions: 'try-1' … 'try-40')"
    )
    assert message.count("exited with code 4") == 2
    assert "step 'odd': exited with code 4; its last lines:\n    | wrote odd" in message


async def test_expansions_that_failed_alike_are_said_once_in_the_run_failure() -> None:
    alike = [
        StepFailure(
            f"bad[x={i}]",
            "exited with code 3",
            last_lines=["a"],
            log_path=f"/l/{i}.log",
            matrix_step="bad",
        )
        for i in range(300)
    ]
    odd = StepFailure(
        "bad[x=odd]", "exited with code 3", last_lines=["b"], log_path="/l/o.log", matrix_step="bad"
    )

    message = str(RunFailed([*alike, odd]))

    assert message.startswith(
        "301 steps failed:\n  step 'bad' (300 expansions: 'bad[x=0]' … 'bad[x=299]'): "
        "exited with code 3; its last lines:\n    | a\n"
    )
    assert "Their logs are /l/0.log and 299 more beside it." in message
    assert "step 'bad[x=odd]': exited with code 3; its last lines:\n    | b" in message
    assert message.count("exited with code 3") == 2


async def test_a_run_failure_says_ten_failures_and_counts_the_rest() -> None:
    failures = [
        StepFailure(f"s{i:03d}", f"exited with code {i}", last_lines=[f"line of s{i:03d}"])
        for i in range(1, 301)
    ]

    message = str(RunFailed(failures))

    assert message.startswith("300 steps failed:\n  step 's001': exited with code 1")
    assert "step 's010': exited with code 10" in message and "s011" not in message
    assert message.endswith("\n  … and 290 more: every one is in .failures")
    assert len(RunFailed(failures).failures) == 300


async def test_the_run_id_option_names_the_run_and_labels_its_containers(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, a={"image": "example/text"})

    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", run_id="nightly-1")

    assert result.run_id == "nightly-1"
    assert fake.jobs[0].labels[f"{LABEL_PREFIX}.run"] == "nightly-1"


async def test_the_result_is_not_there_before_the_run_ends(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, a={"image": "example/text"})

    async with api.open_run(chain, runtime=fake, cache_dir=tmp_path / "cache") as run:
        with pytest.raises(RuntimeError, match="not finished"):
            _ = run.result

    assert run.result.ok


async def test_an_error_before_running_ends_the_events_and_leaves_the_block(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, a={"image": "example/text", "params": {"txt": "x"}})
    seen: list[Event] = []

    async def watch() -> None:
        async with api.open_run(chain, runtime=fake, cache_dir=tmp_path / "cache") as run:
            async for event in run.events():
                seen.append(event)

    with pytest.raises(ParameterError, match="'txt'"):
        await watch()

    assert seen == []
    assert fake.jobs == []


async def test_an_exception_in_the_block_stops_the_run_and_is_raised_as_it_is(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, slow={"image": "example/text", "params": {"delay": 10}})
    events: list[Event] = []

    class Enough(Exception):
        pass

    async def watch_until_started() -> None:
        async with api.open_run(
            chain, runtime=fake, cache_dir=tmp_path / "cache", on_event=events.append
        ) as run:
            async for event in run.events():
                if event.kind == "step_started":
                    raise Enough

    with anyio.fail_after(5), pytest.raises(Enough):
        await watch_until_started()

    assert len(fake.cancelled) == 1
    assert [e.step for e in events if isinstance(e, StepCancelled)] == ["slow"]
    summary = events[-1]
    assert isinstance(summary, RunFinished)
    assert summary.cancelled == 1
    assert list(Cache(tmp_path / "cache").entries()) == []


@pytest.mark.anyio
async def test_hashing_a_big_file_parameter_does_not_hold_up_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash that lasts until the test says so (a file of many GiB): the dry run is cancelled
    while it hashes and returns without waiting for it."""
    hashing, release, hashed = threading.Event(), threading.Event(), threading.Event()
    real = paramfiles.sha256_file

    def slow_sha256(path: Path) -> str:
        hashing.set()
        release.wait(30)  # a guard: released by the test long before
        hashed.set()
        return real(path)

    monkeypatch.setattr(paramfiles, "sha256_file", slow_sha256)
    fake = FakeRuntime()
    fake.add_image(
        "model",
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: weights, type: file}\n",
    )
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 1024)
    chain = parse_chain(
        {"steps": {"m": {"image": "model", "params": {"weights": str(weights)}}}},
        source=str(tmp_path / "chain.yaml"),
        base_dir=tmp_path,
    )
    finished: list[bool] = []

    async def cancel_once_hashing(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(hashing.wait)
        scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_once_hashing, group.cancel_scope)
            await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "cache")
            finished.append(True)
        assert group.cancel_scope.cancelled_caught and not finished, "the dry run was cancelled"
        assert not hashed.is_set(), "and returned while the file was still being hashed"
    finally:
        release.set()


class SlowProbes(FakeRuntime):
    """Reading kliko.yml out of an image takes a while, as a probe container does."""

    probing = 0
    most_at_once = 0

    async def probe_image(self, image_id: str, **kwargs: Any) -> Any:
        self.probing += 1
        self.most_at_once = max(self.most_at_once, self.probing)
        try:
            await anyio.sleep(0.05)
            return await super().probe_image(image_id, **kwargs)
        finally:
            self.probing -= 1


async def test_the_images_of_a_chain_are_read_at_the_same_time(tmp_path: Path) -> None:
    fake = SlowProbes()
    yml = "schema_version: 3\nio: split\nsections: []\n"
    for name in ("sim", "cal", "flag", "img"):
        fake.add_image(f"kliko/{name}", yml)
    fake.add_image("kliko/broken", yml, has_kliko=False)
    steps = [("kliko/sim", {}), ("kliko/cal", {}), ("kliko/flag", {}), ("kliko/img", {})]

    plan = await api.dry_run(chain_from_pairs(steps), runtime=fake, cache_dir=tmp_path / "c")

    assert [s.image.ref for s in plan.steps.values()] == [ref for ref, _ in steps]
    assert fake.most_at_once == 4
    assert fake.probes == 4  # each image once

    broken = chain_from_pairs([*steps, ("kliko/broken", {})])
    with pytest.raises(SpecError, match="no /kliko executable"):
        await api.dry_run(broken, runtime=fake, cache_dir=tmp_path / "c")


async def test_a_dry_run_with_data_leaves_the_cache_folder_as_it_was(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    obs = tmp_path / "obs"
    obs.mkdir()
    (obs / "vis.dat").write_bytes(b"visibilities" * 1000)
    os.utime(obs / "vis.dat", (1e9, 1e9))  # not recent: its hash may be remembered
    chain = parse_chain(
        {"data": {"obs": "obs"}, "steps": {"use": {"image": "example/text", "inputs": ["obs"]}}},
        source=str(tmp_path / "chain.yml"),
        base_dir=tmp_path,
    )
    cache = tmp_path / "cache"
    await api.run(chain, runtime=fake, cache_dir=cache)
    assert (cache / "data-hashes.json").is_file(), "a run remembers what it hashed"
    (obs / "more.dat").write_bytes(b"another night")
    os.utime(obs / "more.dat", (1e9, 1e9))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("*") if p.is_file()}

    plan = await api.dry_run(chain, runtime=fake, cache_dir=cache)

    assert plan.to_run == ["use"], "the data changed"
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("*") if p.is_file()}
    assert after == before, "a dry run writes nothing, not even the data's stat cache"


async def test_a_dry_run_builds_nothing_and_writes_nothing(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "kliko.yml").write_text(KLIKO_YML)
    (tool / "Dockerfile").write_text("FROM scratch\n")
    chain = chain_of(
        tmp_path,
        built={"build": "tool"},
        after={"image": "example/text", "inputs": ["built"]},
        alone={"image": "example/text", "inputs": []},
    )
    cache = tmp_path / "cache"

    before = await api.dry_run(chain, runtime=fake, cache_dir=cache)

    assert fake.builds == 0 and fake.jobs == []
    assert not cache.exists(), "a dry run writes nothing, not even remembered kliko.yml files"
    assert before.unbuilt == {
        "built": f"its image would be built from {tool}",
        "after": "its input 'built' needs its image built first",
    }
    assert before.to_run == ["built", "after", "alone"]
    assert "alone" in before.steps
    explained = await api.explain(chain, runtime=fake, cache_dir=cache, build=False)
    why = {e.step: e.reason for e in explained}
    assert why["built"] == f"its image would be built from {tool}"
    assert why["after"] == "its input 'built' needs its image built first"
    assert fake.builds == 0

    result = await api.run(chain, runtime=fake, cache_dir=cache)
    (image,) = {i.id: i for i in fake.images.values() if i.labels}.values()
    assert image.labels[f"{LABEL_PREFIX}.built"] == "1"
    assert image.labels[f"{LABEL_PREFIX}.build-context"] == str(tool)
    builds = fake.builds

    after = await api.dry_run(chain, runtime=fake, cache_dir=cache)

    assert fake.builds == builds, "the earlier build is found by its labels, not rebuilt"
    assert after.unbuilt == {} and after.to_run == []
    assert {n: s.key for n, s in after.steps.items()} == {n: s.key for n, s in result.steps.items()}
    (tool / "Dockerfile").write_text("FROM scratch\nLABEL changed=1\n")
    changed = await api.dry_run(chain, runtime=fake, cache_dir=cache)
    assert sorted(changed.unbuilt) == ["after", "built"], "a changed folder needs a new build"


@pytest.mark.anyio
@pytest.mark.parametrize("copied_at_planning", [True, False])
async def test_no_scratch_folder_is_published_or_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copied_at_planning: bool
) -> None:
    """A step's scratch/ (parameters.json, the empty /input, copies of file parameters) is
    removed before its entry is published: in the event loop when it holds only small files, in
    the commit's thread when file parameters were copied into it at run time."""
    if not copied_at_planning:  # as a caller of build_job without planning's copies does
        monkeypatch.setattr(
            paramfiles.FileSnapshots,
            "take",
            lambda self, params, where: paramfiles.hash_files(params, where=where),
        )
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 1000)
    fake = FakeRuntime()
    fake.add_image(
        "model",
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: weights, type: file, required: false}\n",
        exit_well,
    )
    chain = parse_chain(
        {
            "steps": {
                "plain": {"image": "model"},
                "with-file": {"image": "model", "params": {"weights": str(weights)}},
            }
        },
        source="t",
        base_dir=tmp_path,
    )
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", out=None)
    assert result.ok
    entries = list(Cache(tmp_path / "cache").entries())
    assert len(entries) == 2
    for entry in entries:
        assert sorted(p.name for p in entry.path.iterdir()) == [LOG, MANIFEST, OUTPUT]
        seen = (entry.path / "output" / "seen").read_text().split()
        assert "/parameters.json" in seen
        assert ("/param_files" in seen) == (entry.manifest.step == "with-file")
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def exit_well(container: FakeContainer) -> int:
    """Say which of its mounts it was given, in /output/seen."""
    seen = sorted(mount.target for mount in container.job.mounts)
    (container.path("/output") / "seen").write_text(" ".join(seen))
    return 0
