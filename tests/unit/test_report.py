"""A run's record and its HTML report, on the fake runtime: what each step did is kept after the
run, and the page shows the graph, the timeline and every step, failures with their last lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import pytest
import yaml

from kliko_async import api
from kliko_async.cache.provenance import key_of, provenance_chain
from kliko_async.cache.store import Cache
from kliko_async.display.report import find_record, write_report
from kliko_async.display.reportsvg import ROWS_UNFOLDED
from kliko_async.display.runrecord import RunRecord, runs_folder
from kliko_async.errors import CacheError, ParameterError
from kliko_async.model.chain import parse_chain
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
"""


async def shout(container: FakeContainer) -> int:
    params = json.loads(container.path("/parameters.json").read_text())
    (container.path("/output") / "text.txt").write_text(params["text"])
    container.log(f"said {params['text']}")
    container.log("<script>alert('from a container')</script>")
    await anyio.sleep(0.01)
    code: int = params["exit"]
    return code


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/shout", KLIKO_YML, shout)
    return runtime


async def run(tmp_path: Path, fake: FakeRuntime, steps: dict[str, object]) -> str:
    chain = parse_chain({"steps": steps}, source=str(tmp_path / "chain.yml"), base_dir=tmp_path)
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache", keep_going=True)
    return result.run_id


DIAMOND: dict[str, object] = {
    "gen": {"image": "example/shout", "params": {"text": "a"}},
    "left": {"image": "example/shout", "inputs": ["gen"], "params": {"text": "l"}},
    "broken": {"image": "example/shout", "inputs": ["gen"], "params": {"exit": 3}},
    "merge": {"image": "example/shout", "inputs": ["left", "broken"]},
}


async def test_a_run_leaves_a_record_of_every_step(tmp_path: Path, fake: FakeRuntime) -> None:
    run_id = await run(tmp_path, fake, DIAMOND)
    record = RunRecord.model_validate_json(
        (runs_folder(tmp_path / "cache") / f"{run_id}.json").read_text()
    )
    states = {s.name: s.state for s in record.steps}
    assert states == {"gen": "ran", "left": "ran", "broken": "failed", "merge": "skipped"}
    assert record.ok is False
    gen, left, broken = (
        next(s for s in record.steps if s.name == n) for n in DIAMOND if n != "merge"
    )
    assert left.inputs == ["gen"] and gen.inputs == []
    assert gen.started_at is not None and gen.ended_at is not None
    assert left.started_at is not None and left.started_at >= gen.ended_at  # after its input
    assert broken.exit_code == 3 and "3" in (broken.reason or "")
    assert "<script>alert('from a container')</script>" in broken.last_lines

    again = await run(tmp_path, fake, DIAMOND)
    second = find_record(tmp_path / "cache", None)  # the latest run
    assert second.run_id == again
    assert {s.name: s.state for s in second.steps}["gen"] == "cached"


async def test_the_report_shows_the_graph_the_timeline_and_each_step(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    run_id = await run(tmp_path, fake, DIAMOND)
    page = write_report(Cache(tmp_path / "cache"), run_id[:6], tmp_path / "r.html").read_text()

    graph = page[page.index('class="graph"') : page.index("</svg>")]
    assert re.findall(r'data-step="([^"]+)" data-state="([^"]+)"', graph) == [
        ("gen", "ran"),
        ("left", "ran"),
        ("broken", "failed"),
        ("merge", "skipped"),
    ]
    assert graph.count('class="edge"') == 4
    timeline = page[page.index('class="timeline"') :]
    assert 'class="bar ran"' in timeline and 'class="bar failed"' in timeline
    assert "id='step-broken'" in page and "exited with code 3" in page
    # what a container wrote is shown, never run: no script but the page's own
    assert "&lt;script&gt;alert(&#x27;from a container&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    # the cached entry's facts: image ID and parameters
    assert "sha256:" in page and "&quot;text&quot;: &quot;l&quot;" in page


async def test_a_big_matrix_is_folded_by_its_matrix_step(tmp_path: Path, fake: FakeRuntime) -> None:
    values = [f"v{i}" for i in range(ROWS_UNFOLDED + 20)]
    run_id = await run(
        tmp_path,
        fake,
        {
            "gen": {"image": "example/shout"},
            "sweep": {"image": "example/shout", "inputs": ["gen"], "matrix": {"text": values}},
        },
    )
    page = write_report(Cache(tmp_path / "cache"), run_id, tmp_path / "r.html").read_text()
    graph = page[page.index('class="graph"') : page.index("</svg>")]
    assert graph.count('class="node"') == 2
    assert f"sweep ×{len(values)}" in graph
    timeline = page[page.index('class="timeline"') :]
    assert timeline.count('class="row"') == 2
    assert page.count("data-matrix='sweep'") == 1 and page.count("class='step'") == len(values) + 1


async def test_no_run_yet_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="no run has been recorded"):
        write_report(Cache(tmp_path / "cache"), None, tmp_path / "r.html")
    with pytest.raises(ParameterError, match="no run with an ID starting 'abc'"):
        find_record(tmp_path / "cache", "abc")


async def test_a_run_id_is_the_start_of_one_never_a_pattern(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """``report 5d0*`` (a shell habit) had raised a traceback ('**' in a glob pattern)."""
    run_id = await run(tmp_path, fake, {"gen": {"image": "example/shout"}})
    assert find_record(tmp_path / "cache", run_id[:4]).run_id == run_id
    for given in ("*", f"{run_id[:4]}*", "?" * 12, "[0-9a-f]", f"../records/{run_id}"):
        with pytest.raises(ParameterError, match="no run with an ID starting"):
            find_record(tmp_path / "cache", given)


async def test_provenance_of_an_export_rebuilds_it_from_the_cache(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """The chain that provenance prints, run with the same cache, starts no container; its
    images are IDs, its parameters complete, its steps those upstream of the product only."""
    steps: dict[str, object] = {
        "gen": {"image": "example/shout", "params": {"text": "a"}},
        "left": {"image": "example/shout", "inputs": ["gen"], "params": {"text": "l"}},
        "right": {"image": "example/shout", "inputs": ["gen"], "params": {"text": "r"}},
        "merge": {"image": "example/shout", "inputs": ["left", "right"]},
        "aside": {"image": "example/shout", "params": {"text": "unrelated"}},
    }
    chain = parse_chain({"steps": steps}, source=str(tmp_path / "c.yml"), base_dir=tmp_path)
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    result = await api.run(chain, runtime=fake, cache_dir=cache_dir, out=out)
    assert result.ok

    cache = Cache(cache_dir)
    text = provenance_chain(cache, key_of(str(out / "merge"), cache))
    assert key_of(result.steps["merge"].key[:10], cache) == result.steps["merge"].key
    data = yaml.safe_load(text)
    assert list(data["steps"]) == ["gen", "left", "right", "merge"]  # inputs first, no 'aside'
    assert data["steps"]["merge"]["inputs"] == ["left", "right"]
    image_id = await fake.resolve_image("example/shout")
    assert {s["image"] for s in data["steps"].values()} == {image_id}
    assert data["steps"]["left"]["params"] == {"text": "l", "exit": 0}  # defaults included

    started = len(fake.jobs)
    again = parse_chain(data, source=str(tmp_path / "p.yml"), base_dir=tmp_path)
    rerun = await api.run(again, runtime=fake, cache_dir=cache_dir)
    assert rerun.ok and len(fake.jobs) == started  # fully cached: no container
    assert rerun.steps["merge"].key == result.steps["merge"].key

    elsewhere = await api.run(again, runtime=fake, cache_dir=tmp_path / "other-cache")
    assert elsewhere.steps["merge"].key == result.steps["merge"].key  # the same keys anew


async def test_provenance_names_a_few_renamed_inputs_of_a_matrix_consumer_and_counts_them(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """A consumer of a 2,000-way matrix had every input's name in one comment line (60 kB)."""
    steps: dict[str, object] = {
        "sweep": {"image": "example/shout", "matrix": {"text": [f"t{i}" for i in range(7)]}},
        "all": {"image": "example/shout", "inputs": ["sweep"]},
    }
    chain = parse_chain({"steps": steps}, source=str(tmp_path / "c.yml"), base_dir=tmp_path)
    result = await api.run(chain, runtime=fake, cache_dir=tmp_path / "cache")
    assert result.ok
    cache = Cache(tmp_path / "cache")

    text = provenance_chain(cache, result.steps["all"].key)

    (note,) = [line for line in text.splitlines() if "are renamed here" in line]
    assert "inputs sweep[text=t0], sweep[text=t1], sweep[text=t2], ... (7 in all) of all" in note
    assert "sweep[text=t6]" not in note


async def test_provenance_of_something_else_is_one_clear_error(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    cache = Cache(tmp_path / "cache")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ParameterError, match="neither an exported step folder"):
        key_of(str(tmp_path / "mine"), cache)
    with pytest.raises(ParameterError, match="no entry with a key starting 'abcdef'"):
        key_of("abcdef", cache)


async def test_the_timeline_shows_publishing_apart_from_running(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    run_id = await run(tmp_path, fake, {"gen": {"image": "example/shout"}})
    record = find_record(tmp_path / "cache", run_id)
    (gen,) = record.steps
    assert gen.started_at is not None and gen.publishing_at is not None
    assert gen.ended_at is not None and gen.started_at <= gen.publishing_at <= gen.ended_at
    page = write_report(Cache(tmp_path / "cache"), run_id, tmp_path / "r.html").read_text()
    assert 'class="bar publishing"' in page
