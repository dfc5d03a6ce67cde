"""Chains of Kliko images on a real engine: ``kliko-async run``, the cache, and the library API."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

import kliko_async
from kliko_async.cache.logfiles import log_content
from kliko_async.events import Event, LogLine, StepCached, StepFinished, StepStarted

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

ROOT = Path(__file__).resolve().parents[2]
DIAMOND = ROOT / "examples" / "chains" / "diamond.yaml"
DIAMOND_STEPS = ["gen", "upper", "lower", "merge"]
Creations = Callable[..., list[dict[str, str]]]
Users = Callable[[subprocess.Popen[bytes], Path], list[str]]


def numbers(n: int, scale: float = 1.5, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i * scale:g}\n" for i in range(1, n + 1))


def diamond_merged(n: int) -> str:
    """merged.txt of the diamond: merge reads its inputs' subfolders in sorted order."""
    return numbers(n) + "----\n" + numbers(n).upper() + "----\n"


def write_chain(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def diamond_copy(folder: Path, **gen_params: object) -> Path:
    """examples/chains/diamond.yaml, with some of gen's parameters changed."""
    data = yaml.safe_load(DIAMOND.read_text())
    data["steps"]["gen"]["params"].update(gen_params)
    return write_chain(folder / "diamond.yaml", yaml.safe_dump(data, sort_keys=False))


def states(stdout: str) -> dict[str, str]:
    """The last state the --plain display reported for each step (started, cached, done ...)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        match = re.match(r"(\S+) \| (started|cached|done|FAILED|skipped|cancelled)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


# -- kliko-async run ---------------------------------------------------------------------------


def test_diamond_chain_runs_every_step_and_merges(kliko: KlikoCli, tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = kliko("run", DIAMOND, "--cache-dir", tmp_path / "cache", "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert states(done.stdout) == dict.fromkeys(DIAMOND_STEPS, "done")
    assert (out / "merge" / "merged.txt").read_text() == diamond_merged(5)
    assert (out / "gen" / "numbers.txt").read_text() == numbers(5, prefix="Line")
    assert (out / "lower" / "numbers.txt.low").read_text() == numbers(5)
    assert "gen | gen: writing 5 lines" in done.stdout, "log lines are shown, prefixed"
    assert "4 ran, 0 cached, 0 failed" in done.stdout


def test_the_example_chain_with_a_build_step_builds_its_image_and_runs(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """examples/chains/build.yaml named a build folder, ../build/count, that was never in the
    repository: 'cannot read the build folder: No such file or directory'."""
    out = tmp_path / "out"

    done = kliko(
        "run", ROOT / "examples/chains/build.yaml", "--cache-dir", tmp_path / "c", "--out", out
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "count" / "counts.txt").read_text() == (
        "./numbers.txt lines 4\n./numbers.txt words 8\n./numbers.txt bytes 28\n"
    )


def test_a_fully_cached_rerun_starts_no_container(
    kliko: KlikoCli, tmp_path: Path, container_creations: Creations
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = kliko("run", DIAMOND, "--cache-dir", cache, "--out", out, "--plain")
    assert first.returncode == 0, first.stdout + first.stderr
    (out / "merge" / "merged.txt").unlink()

    since = time.time()
    log = tmp_path / "rerun.log"
    process = kliko.popen("run", DIAMOND, "--cache-dir", cache, "--out", out, "--plain", log=log)
    code = process.wait(timeout=60)
    until = time.time() + 0.5
    rerun = log.read_text()

    assert code == 0, rerun
    assert states(rerun) == dict.fromkeys(DIAMOND_STEPS, "cached")
    assert "0 ran, 4 cached" in rerun
    assert (out / "merge" / "merged.txt").read_text() == diamond_merged(5), "outputs exported"
    # Only this process's containers count (kliko.yml probes carry the owner label too): others
    # may use the same engine meanwhile, and probe the example images for caches of their own.
    created = container_creations(since, until, owner_pid=process.pid)
    assert created == [], "no step container and no kliko.yml probe on a fully cached run"


def test_changing_a_parameter_upstream_reruns_everything_below(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = kliko("run", diamond_copy(tmp_path), "--cache-dir", cache, "--out", out, "--plain")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (out / "merge" / "merged.txt").read_text() == diamond_merged(5)

    changed = kliko(
        "run", diamond_copy(tmp_path, n=7), "--cache-dir", cache, "--out", out, "--plain"
    )

    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert states(changed.stdout) == dict.fromkeys(DIAMOND_STEPS, "done")
    assert "4 ran, 0 cached" in changed.stdout
    assert (out / "merge" / "merged.txt").read_text() == diamond_merged(7)


def test_dry_run_tells_what_would_run_and_what_is_cached(kliko: KlikoCli, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert kliko("run", DIAMOND, "--cache-dir", cache, "--out", out, "--plain").returncode == 0
    chain = yaml.safe_load(DIAMOND.read_text())
    chain["steps"]["lower"]["params"]["suffix"] = ".lc"
    changed = write_chain(tmp_path / "changed.yaml", yaml.safe_dump(chain))
    entries_before = sorted((cache / "entries").rglob("manifest.json"))

    done = kliko("run", changed, "--cache-dir", cache, "--out", tmp_path / "dry", "--dry-run")

    assert done.returncode == 0, done.stderr
    plan = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "cached" in plan["gen"]
    assert "cached" in plan["upper"]
    assert "would run" in plan["lower"]
    assert "would run" in plan["merge"], "merge depends on lower"
    assert "2 to run, 2 cached" in done.stdout
    assert not (tmp_path / "dry").exists(), "a dry run runs nothing and writes no output"
    assert sorted((cache / "entries").rglob("manifest.json")) == entries_before


def test_a_dry_run_builds_nothing_and_built_images_are_labelled_for_pruning(
    kliko: KlikoCli, tmp_path: Path, container_creations: Callable[[float, float], list[Any]]
) -> None:
    tool = tmp_path / "tool"
    tool.mkdir()
    (tool / "kliko.yml").write_text("schema_version: 3\nio: split\nsections: []\n")
    (tool / "kliko").write_text("#!/bin/sh\necho built tool > /output/tool.txt\n")
    (tool / "kliko").chmod(0o755)
    (tool / "Dockerfile").write_text("FROM kliko-async/busybox\nCOPY kliko.yml kliko /\n")
    chain = write_chain(tmp_path / "chain.yaml", "steps:\n  tool: {build: tool}\n")
    cache = tmp_path / "cache"
    label = f"label=io.kliko-async.build-context={tool}"

    def images(*filters: str) -> list[str]:
        args = [f for flt in (label, *filters) for f in ("--filter", flt)]
        listed = subprocess.run(
            ["docker", "image", "ls", "-q", "--no-trunc", *args], capture_output=True, text=True
        )
        return listed.stdout.split()

    try:
        dry = kliko("run", chain, "--cache-dir", cache, "--dry-run", "--explain")
        assert dry.returncode == 0, dry.stderr
        assert f"would run: its image would be built from {tool}" in dry.stdout
        assert images() == [], "a dry run builds nothing, not even to explain itself"
        assert not cache.exists(), "and writes nothing"

        first = kliko("run", chain, "--cache-dir", cache, "--plain")
        assert first.returncode == 0, first.stderr
        (built,) = images("label=io.kliko-async.built=1")
        since = time.time()
        again = kliko("run", chain, "--cache-dir", cache, "--dry-run")
        assert again.returncode == 0, again.stderr
        assert "cached" in again.stdout and "1 to run" not in again.stdout
        probes = [c for c in container_creations(since, time.time()) if c.get("image") == built]
        assert probes == [], "found by its labels, its kliko.yml remembered: no probe"

        (tool / "kliko").write_text("#!/bin/sh\necho rebuilt > /output/tool.txt\n")
        assert kliko("run", chain, "--cache-dir", cache, "--plain").returncode == 0
        assert built in images("dangling=true"), "the old build can be pruned by its label"
    finally:
        found = images()
        if found:
            subprocess.run(["docker", "rmi", "-f", *found], capture_output=True)


FAILING_CHAIN = """\
# 'bad' fails fast; 'slow' is an independent branch still running when it does.
steps:
  bad:
    image: example/fail
    params: {code: 7, message: "detector on fire"}
  after_bad:
    image: example/upper
    inputs: [bad]
  slow:
    image: example/sleep
    params: {seconds: 3, tag: slow}
  after_slow:
    image: example/upper
    inputs: [slow]
"""


def test_a_failure_stops_new_steps_and_points_to_the_log(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(tmp_path / "failing.yaml", FAILING_CHAIN)

    done = kliko(
        "run", chain, "--cache-dir", tmp_path / "cache", "--out", "out", "--plain", "-j", "4"
    )

    assert done.returncode == 1
    assert states(done.stdout) == {
        "bad": "FAILED",
        "after_bad": "skipped",
        "slow": "done",  # it was running already: running steps finish
        "after_slow": "skipped",  # not started after the failure without --keep-going
    }
    assert "exited with code 7" in done.stdout
    match = re.search(r"full log: (\S+)", done.stdout)
    assert match, done.stdout
    log = Path(match.group(1))
    log = log if log.is_absolute() else tmp_path / log
    assert "detector on fire" in log.read_text()
    assert "Traceback" not in done.stderr


def test_keep_going_finishes_the_independent_branch(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(tmp_path / "failing.yaml", FAILING_CHAIN)
    out = tmp_path / "out"

    done = kliko(
        "run", chain, "--cache-dir", tmp_path / "cache", "--out", out, "--plain", "--keep-going"
    )

    assert done.returncode == 1, "a failed step still fails the run"
    assert states(done.stdout) == {
        "bad": "FAILED",
        "after_bad": "skipped",
        "slow": "done",
        "after_slow": "done",
    }
    assert (out / "after_slow" / "slept.txt").read_text().split() == ["SLEPT", "3.0", "SLOW"]
    assert not (out / "after_bad").exists()


def test_a_failed_step_is_not_cached(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(
        tmp_path / "fail.yaml",
        "steps:\n  bad:\n    image: example/fail\n    params: {code: 3}\n",
    )
    cache = tmp_path / "cache"

    first = kliko("run", chain, "--cache-dir", cache, "--out", "out", "--plain")
    again = kliko("run", chain, "--cache-dir", cache, "--out", "out", "--plain")

    assert (first.returncode, again.returncode) == (1, 1)
    assert "bad | started" in again.stdout, "the failed step runs again"
    assert states(again.stdout) == {"bad": "FAILED"}
    listed = kliko("cache", "ls", "--cache-dir", cache)
    assert "0 entries" in listed.stdout


def test_a_step_timeout_stops_the_container(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(
        tmp_path / "slow.yaml",
        "steps:\n  nap:\n    image: example/sleep\n    params: {seconds: 600}\n    timeout: 1\n",
    )

    # A 10-minute sleep: had the timeout not stopped it, the command's own timeout (120 s) fails.
    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--out", "out", "--plain")

    assert done.returncode == 1
    assert "nap | FAILED: timed out" in done.stdout


def test_outputs_belong_to_the_invoking_user_even_from_another_user(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = write_chain(
        tmp_path / "users.yaml",
        """\
steps:
  mine:
    image: example/gen
    params: {n: 2}
  theirs:
    image: example/upper
    inputs: [mine]
    user: "1234:1234"
""",
    )
    cache, out = tmp_path / "cache", tmp_path / "out"

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "theirs" / "numbers.txt").read_text() == "LINE 1\nLINE 2\n"
    owners = {path.stat().st_uid for path in out.rglob("*")}
    assert owners == {os.getuid()}
    # The step itself ran as the user it names. As root, its cached output stays that user's;
    # anyone else cannot chown, seal or delete another uid's files, so the engine gives them to
    # the invoking user after the step.
    cached = [
        m.parent / "output" / "numbers.txt"
        for m in (cache / "entries").rglob("manifest.json")
        if json.loads(m.read_text())["step"] == "theirs"
    ]
    assert [p.stat().st_uid for p in cached] == [1234 if os.geteuid() == 0 else os.getuid()]
    assert stat.S_IMODE(cached[0].stat().st_mode) == 0o644, "sealed: writable by its owner only"
    assert kliko("cache", "verify", "--cache-dir", cache).returncode == 0
    tidied = kliko("cache", "gc", "--max-size", "0", "--cache-dir", cache)
    assert tidied.returncode == 0, tidied.stderr
    assert not list((cache / "entries").rglob("*")), "and gc can remove it"


def test_step_containers_run_as_the_invoking_uid_and_gid(
    kliko: KlikoCli, tmp_path: Path, container_users: Users
) -> None:
    """Checked on the container itself: when the tests run as root, file owners cannot tell."""
    chain = write_chain(
        tmp_path / "nap.yaml",
        "steps:\n  nap:\n    image: example/sleep\n    params: {seconds: 3}\n",
    )
    log = tmp_path / "run.log"
    process = kliko.popen("run", chain, "--cache-dir", tmp_path / "cache", "--plain", log=log)

    assert container_users(process, log) == [f"{os.getuid()}:{os.getgid()}"]


def test_cache_ls_and_verify(kliko: KlikoCli, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert kliko("run", DIAMOND, "--cache-dir", cache, "--out", "out", "--plain").returncode == 0

    listed = kliko("cache", "ls", "--cache-dir", cache)
    assert listed.returncode == 0, listed.stderr
    assert "4 entries" in listed.stdout
    for step in DIAMOND_STEPS:
        assert re.search(rf"│ {step}\s+│ example/{step}\s+│", listed.stdout), step

    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 problem(s)" in verified.stdout

    (manifest,) = [
        m
        for m in (cache / "entries").rglob("manifest.json")
        if json.loads(m.read_text())["step"] == "gen"
    ]
    tampered = manifest.parent / "output" / "numbers.txt"
    tampered.chmod(0o644)
    tampered.write_text("not what gen wrote\n")

    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 1
    key = manifest.parent.name
    assert f"{key}: output/numbers.txt: content changed" in verified.stdout
    assert "1 problem(s)" in verified.stdout
    assert "runs take these entries as they are: 'kliko-async cache verify --remove'" in (
        verified.stdout
    )

    # Runs take an entry by its manifest: the tampered one is removed, and computed again.
    removed = kliko("cache", "verify", "--remove", "--cache-dir", cache)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed 1: the next run computes them again" in removed.stdout
    assert not manifest.parent.exists()
    rerun = kliko("run", DIAMOND, "--cache-dir", cache, "--out", "out", "--plain")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "3 cached" in rerun.stdout, rerun.stdout
    assert (tmp_path / "out" / "gen" / "numbers.txt").read_text() != "not what gen wrote\n"
    assert "0 problem(s)" in kliko("cache", "verify", "--cache-dir", cache).stdout


# -- the library -------------------------------------------------------------------------------


def test_run_chain_like_kliko(tmp_path: Path) -> None:
    result = kliko_async.run_chain(
        [("example/gen", {"n": 2}), ("example/upper", {})], cache_dir=tmp_path / "cache"
    )

    assert result.ok
    last = list(result.steps.values())[-1]
    assert last.output is not None
    assert (last.output / "numbers.txt").read_text() == "LINE 1\nLINE 2\n"


def test_run_chain_as_kliko_08_called_it_with_a_docker_client_and_kliko_dir(
    tmp_path: Path,
) -> None:
    """Kliko 0.8's ``run_chain(steps, docker.Client(), kliko_dir=...)``: the client says which
    engine to use (here a docker-py client on the local socket), ``kliko_dir`` is the cache."""
    import docker

    steps = [("example/gen", {"n": 2}), ("example/upper", {})]
    client = docker.APIClient(base_url="unix:///var/run/docker.sock")
    result = kliko_async.run_chain(steps, client, kliko_dir=tmp_path / "kliko")
    last = list(result.steps.values())[-1]
    assert last.output is not None
    assert last.output.is_relative_to(tmp_path / "kliko")
    assert (last.output / "numbers.txt").read_text() == "LINE 1\nLINE 2\n"
    again = kliko_async.run_chain(steps, docker.from_env(), kliko_dir=tmp_path / "kliko")
    assert again.count("cached") == 2

    elsewhere = docker.APIClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    with pytest.raises(kliko_async.RuntimeUnavailable, match=r"no-engine\.sock"):
        kliko_async.run_chain(steps, elsewhere, kliko_dir=tmp_path / "kliko")


def test_run_chain_raises_saying_why_a_step_failed(tmp_path: Path) -> None:
    with pytest.raises(kliko_async.RunFailed) as failed:
        kliko_async.run_chain(
            [("example/gen", {"n": 2}), ("example/fail", {"code": 4, "message": "no beam"})],
            cache_dir=tmp_path / "cache",
        )

    (failure,) = failed.value.failures
    assert failure.exit_code == 4
    assert failure.reason == "exited with code 4"
    # stdout and stderr lines, each stream in order (the order between streams may vary)
    assert sorted(failure.last_lines) == ["fail: about to fail", "no beam"]
    assert failure.log_path is not None
    # The saved log holds the same lines in the engine's order, which the last lines follow.
    saved = log_content(Path(failure.log_path)).decode().splitlines()
    assert saved == list(failure.last_lines)
    message = str(failed.value)
    assert f"step '{failure.step}': exited with code 4; its last lines:" in message
    assert "    | no beam\n" in message
    assert f"Its full log is in {failure.log_path}" in message


@pytest.mark.anyio
async def test_run_from_async_code_with_events(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    events: list[Event] = []

    result = await kliko_async.run(DIAMOND, cache_dir=cache, on_event=events.append)

    assert result.ok
    assert {e.step for e in events if isinstance(e, StepStarted)} == set(DIAMOND_STEPS)
    assert {e.step for e in events if isinstance(e, StepFinished)} == set(DIAMOND_STEPS)
    logs = [(e.step, e.stream, e.text) for e in events if isinstance(e, LogLine)]
    assert ("gen", "stdout", "gen: writing 5 lines") in logs
    assert ("gen", "stderr", "gen: done") in logs
    assert events[-1].kind == "run_finished"
    merged = result.steps["merge"].output
    assert merged is not None
    assert (merged / "merged.txt").read_text() == diamond_merged(5)

    # The same run again, its events read as an async iterator: everything comes from the cache.
    async with kliko_async.open_run(DIAMOND, cache_dir=cache) as run:
        seen = [event async for event in run.events()]
    assert {e.step for e in seen if isinstance(e, StepCached)} == set(DIAMOND_STEPS)
    assert not [e for e in seen if isinstance(e, StepStarted)]
    assert run.result.count("cached") == 4


def test_a_gpu_step_on_a_machine_without_gpus_fails_with_the_engines_reason(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = write_chain(
        tmp_path / "gpu.yaml", "steps:\n  g: {image: example/gen, resources: {gpus: 1}}\n"
    )

    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--plain")

    assert done.returncode == 1
    assert "g | FAILED: the engine could not start the container" in done.stdout
    assert "gpu" in done.stdout
    assert "Traceback" not in done.stderr
