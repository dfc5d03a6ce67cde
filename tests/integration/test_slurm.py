"""The Slurm backend on a real Slurm 22.05 cluster that scripts/slurm-cluster starts here.

Two nodes with Docker (partition 'kliko', the default) and one without ('bare1', partition
'bare', where containers run with Charliecloud). Every node sees this machine's filesystem, so
the test's cache folder is shared as a site's NFS would be. With ``CI=true`` a cluster that does
not come up is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import test_kliko_compat as compat
from slurmrun import (
    BackgroundRun,
    active,
    background_run,
    jobs_after,
    last_job_id,
    real,
    shim,
    sleep_chain,
    wait_until,
    write_chain,
)

from conftest import KLIKO_ASYNC, KlikoCli

ROOT = Path(__file__).resolve().parents[2]
compat_images = compat.compat_images  # the fixture that builds Kliko's examples
DIAMOND = ROOT / "examples" / "chains" / "diamond.yaml"

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The project's two-node test cluster, up (idempotent; it stays up for later tests)."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if os.geteuid() != 0 and not in_ci:
        pytest.skip("scripts/slurm-cluster needs root")
    done = subprocess.run(
        [str(ROOT / "scripts" / "slurm-cluster"), "up"], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/slurm-cluster up failed:\n{done.stderr}")


def job_containers(jobs: list[dict[str, Any]]) -> list[str]:
    """Docker containers of these jobs that still exist (a job's container is its own: the
    autouse check for leftovers does not count it)."""
    found = []
    for job in jobs:
        found += subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=^kliko-slurm-{job['job_id']}$"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return found


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def local_diamond(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The diamond example's outputs from a local run (Docker on this machine)."""
    folder = tmp_path_factory.mktemp("local-diamond")
    local = KlikoCli(folder)("run", DIAMOND, "--plain", "--cache-dir", "c", "--out", "out")
    assert local.returncode == 0, local.stdout + local.stderr
    outputs = tree_bytes(folder / "out")
    assert len(outputs) >= 4
    return outputs


def test_diamond_is_byte_identical_on_slurm_and_locally_and_a_rerun_submits_nothing(
    kliko: KlikoCli, tmp_path: Path, local_diamond: dict[str, bytes]
) -> None:
    first = last_job_id()
    slurm = kliko(
        "run", DIAMOND, "--backend", "slurm", "--plain", "--cache-dir", "c", "--out", "slurm"
    )
    assert slurm.returncode == 0, slurm.stdout + slurm.stderr
    assert sorted(j["name"].rsplit("-", 1)[1] for j in jobs_after(first)) == [
        "gen",
        "lower",
        "merge",
        "upper",
    ]
    assert tree_bytes(tmp_path / "slurm") == local_diamond
    # The saved log of each step is complete, as for local steps.
    assert "gen: writing 5 lines" in slurm.stdout

    before_rerun = last_job_id()
    again = kliko("run", DIAMOND, "--backend", "slurm", "--plain", "--cache-dir", "c")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 cached" in again.stdout
    assert last_job_id() == before_rerun, "a fully cached re-run submitted a job"


def test_independent_steps_run_on_both_nodes(kliko: KlikoCli, tmp_path: Path) -> None:
    # Each branch wants a whole node's CPUs, so Slurm must put them on different nodes.
    branches = "\n".join(
        f"  b{i}: {{image: example/sleep, params: {{seconds: 1, tag: b{i}}}, "
        "resources: {cpus: 8}}"
        for i in range(2)
    )
    chain = write_chain(tmp_path, f"steps:\n{branches}\n")
    first = last_job_id()
    done = kliko("run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c")
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_after(first)
    assert len(jobs) == 2
    assert sorted(j["nodes"] for j in jobs) == ["node1", "node2"]
    assert all(j["cpus"] == 8 and j["job_state"] == "COMPLETED" for j in jobs)
    assert (tmp_path / "kliko-out" / "b1" / "slept.txt").read_text() == "slept 1.0 b1\n"


FAILING = """\
steps:
  broken: {image: example/fail, params: {code: 7, message: disk on fire}}
  after: {image: example/upper, inputs: [broken]}
  other: {image: example/sleep, params: {seconds: 1, tag: other}}
"""


def test_a_failing_step_reports_its_exit_code_and_its_dependents_are_not_submitted(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = write_chain(tmp_path, FAILING)
    first = last_job_id()
    done = kliko("run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c")
    assert done.returncode == 1
    assert "broken | FAILED: exited with code 7" in done.stdout
    assert "disk on fire" in done.stdout  # its last lines, from the followed log
    assert "after | skipped: input 'broken' did not finish" in done.stdout
    names = {j["name"].rsplit("-", 1)[1] for j in jobs_after(first)}
    assert "after" not in names
    saved = list((tmp_path / "c" / "logs").rglob("broken.log"))
    assert saved and "disk on fire" in saved[0].read_text()


def test_keep_going_runs_the_independent_branch_on_slurm(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(tmp_path, FAILING)
    done = kliko("run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c", "--keep-going")
    assert done.returncode == 1
    assert "other | done" in done.stdout
    assert "after | skipped" in done.stdout
    assert (tmp_path / "kliko-out" / "other" / "slept.txt").read_text() == "slept 1.0 other\n"


def test_a_seconds_level_timeout_stops_the_job(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(
        tmp_path,
        "steps:\n  slow: {image: example/sleep, params: {seconds: 60, tag: t}, timeout: 5}\n",
    )
    first = last_job_id()
    done = kliko("run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c")
    assert done.returncode == 1
    assert "slow | FAILED: timed out after 5 s" in done.stdout
    # Its first line was followed while the job ran: the container never finished.
    assert "slow | sleep: 60.0s" in done.stdout
    (job,) = jobs_after(first)
    assert job["job_state"] == "CANCELLED"
    assert job["time_limit"] == 2  # minutes: 5 s + the job's own margin, rounded up


def test_an_impossible_request_fails_with_slurms_reason(kliko: KlikoCli, tmp_path: Path) -> None:
    chain = write_chain(
        tmp_path,
        "steps:\n"
        "  huge: {image: example/sleep, params: {seconds: 0}, resources: {memory: 64g}}\n"
        "  gpu: {image: example/sleep, params: {seconds: 0, tag: g}, resources: {gpus: 1}}\n",
    )
    # Refused at once: had it waited in the queue for resources that never come, the command's
    # own timeout would fail the test.
    done = kliko("run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c", "--keep-going")
    assert done.returncode == 1
    assert "huge | FAILED: Slurm refused the job: sbatch: error: Memory specification" in (
        done.stdout
    )
    assert "gpu | FAILED: Slurm refused the job: sbatch: error: Invalid generic resource" in (
        done.stdout
    )


def test_charliecloud_runs_the_steps_on_a_node_without_docker(
    kliko: KlikoCli,
    tmp_path: Path,
    container_creations: Callable[[float, float], list[dict[str, str]]],
    local_diamond: dict[str, bytes],
) -> None:
    first = last_job_id()
    since = time.time()
    done = kliko(
        "run", DIAMOND, "--backend", "slurm", "--partition", "bare", "--plain",
        "--cache-dir", "c", "--out", "bare",
    )  # fmt: skip
    until = time.time()
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_after(first)
    assert len(jobs) == 4 and {j["nodes"] for j in jobs} == {"bare1"}
    # No Docker container ran the steps: ch-run did, on the image converted into the cache.
    run_id = done.stdout.split()[1].rstrip(":")
    mine = [c for c in container_creations(since, until) if c.get("io.kliko-async.run") == run_id]
    assert mine == []
    assert list((tmp_path / "c" / "slurm" / "images").iterdir())
    assert tree_bytes(tmp_path / "bare") == local_diamond


SLOW = """\
steps:
  a: {image: example/sleep, params: {seconds: 60, tag: a}}
  b: {image: example/sleep, params: {seconds: 60, tag: b}}
  c: {image: example/sleep, params: {seconds: 60, tag: c}, resources: {cpus: 8}}
  d: {image: example/sleep, params: {seconds: 60, tag: d}, resources: {cpus: 8}}
  e: {image: example/sleep, params: {seconds: 60, tag: e}, resources: {cpus: 8}}
"""


def running_and_pending(
    kliko: KlikoCli, tmp_path: Path, chain_text: str
) -> AbstractContextManager[BackgroundRun]:
    """``kliko-async run --plain`` of ``chain_text`` on Slurm, once some of its jobs run and
    others wait for a node."""
    return background_run(
        kliko, tmp_path, chain_text,
        ready=lambda run: {j["job_state"] for j in run.jobs()} >= {"RUNNING", "PENDING"},
        what="running and pending jobs",
    )  # fmt: skip


def all_cancelled_and_gone(first: int, tmp_path: Path) -> list[dict[str, Any]]:
    """The run's jobs after ``first``, each checked cancelled, with no container and no
    staging folder left."""
    jobs = jobs_after(first)
    assert active(jobs) == []
    assert {j["job_state"] for j in jobs} == {"CANCELLED"}
    assert job_containers(jobs) == []
    assert not list((tmp_path / "c" / "tmp").iterdir())  # no staging folder left
    return jobs


def test_sigterm_mid_run_leaves_no_job_pending_or_running(kliko: KlikoCli, tmp_path: Path) -> None:
    # Some jobs run, at least one waits for a node (c, d, e each need a whole node).
    with running_and_pending(kliko, tmp_path, SLOW) as run:
        wait_until(lambda: "| started" in run.text(), "a started step")
        # The display says which job each step is, where it runs, and why a job waits.
        wait_until(
            lambda: bool(re.search(r"\| \[kliko-async\] Slurm job \d+ is pending: \w", run.text())),
            "a pending job's reason",
        )
        assert re.search(r"\| \[kliko-async\] Slurm job \d+ runs on node \w", run.text())
        run.signal(signal.SIGTERM)
        run.exits_with(143, within=60)
        assert len(all_cancelled_and_gone(run.first, tmp_path)) >= 3


SLOW_MATRIX = """\
steps:
  sweep:
    image: example/sleep
    params: {seconds: 120}
    resources: {cpus: 8}
    matrix: {tag: [m0, m1, m2, m3, m4, m5]}
"""


def test_ctrl_c_cancels_every_task_of_an_array_running_or_pending(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The six expansions go in as one array; each needs a whole node, so some tasks run and
    the others wait. Ctrl-C then: every task cancelled (the pending ones too), no container
    left on a node, no staging folder and no array folder left in the cache."""
    with running_and_pending(kliko, tmp_path, SLOW_MATRIX) as run:
        wait_until(lambda: run.text().count("| started") >= 2, "two started steps")
        assert re.search(r"\| \[kliko-async\] Slurm job \d+_\d runs on node \w", run.text())
        run.ctrl_c()
        jobs = all_cancelled_and_gone(run.first, tmp_path)  # (by the run, not by the test)
    assert {j["array_job_id"] for j in jobs} - {0} != set(), "the expansions went in as an array"
    arrays = tmp_path / "c" / "slurm" / "arrays"
    assert not arrays.exists() or not list(arrays.iterdir()), list(arrays.iterdir())


def test_a_later_run_cancels_the_jobs_of_a_killed_run(kliko: KlikoCli, tmp_path: Path) -> None:
    """... before it removes their staging folders, where they still write (the folders were
    removed first)."""
    seen, staged = tmp_path / "staging-at-scancel", tmp_path / "c" / "tmp"
    noting = f'#!/bin/sh\nls {staged} >> {seen}\nexec {real("scancel")} "$@"\n'
    shim(tmp_path, kliko, "scancel", noting)
    with background_run(kliko, tmp_path, sleep_chain(120, "kill9", step="a")) as run:
        run.process.kill()  # kill -9: nothing cleans up
        run.process.wait()
        assert run.job()["job_state"] == "RUNNING"
        (staging,) = staged.iterdir()
        (tmp_path / "other").mkdir()
        other = write_chain(
            tmp_path / "other", "steps:\n  x: {image: example/gen, params: {n: 1}}\n"
        )
        done = kliko("run", other, "--backend", "slurm", "--plain", "--cache-dir", "c")
        assert done.returncode == 0, done.stdout + done.stderr
        leftover = run.job()
    assert leftover["job_state"] == "CANCELLED"
    assert job_containers([leftover]) == []
    assert staging.name in seen.read_text().split(), "its folder went before its job"
    assert not staging.exists()


def test_a_cache_the_nodes_cannot_see_is_refused(kliko: KlikoCli, tmp_path: Path) -> None:
    # In a mount namespace of its own, kliko-async's cache is a tmpfs that no node can see.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    script = (
        f"mount -t tmpfs none {hidden} && exec {KLIKO_ASYNC} run {DIAMOND} "
        f"--backend slurm --plain --cache-dir {hidden}/cache"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=tmp_path,
        env=kliko.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not visible at the same path on node(s) node1, node2" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_profile_sets_the_backend_partition_and_sbatch_options(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "default: cluster\n"
        "profiles:\n"
        "  cluster:\n"
        "    backend: slurm\n"
        "    partition: bare\n"
        "    slurm_opts: [--comment-is-not-an-option-we-use=1]\n"
        "    cache_dir: shared-cache\n"
    )
    kliko.env["KLIKO_ASYNC_CONFIG"] = str(config)
    chain = write_chain(tmp_path, "steps:\n  g: {image: example/gen, params: {n: 2}}\n")
    refused = kliko("run", chain, "--plain")
    assert refused.returncode == 1  # the profile's sbatch option reached sbatch
    assert "unrecognized option '--comment-is-not-an-option-we-use=1'" in refused.stderr
    config.write_text(config.read_text().replace("[--comment-is-not-an-option-we-use=1]", "[]"))
    first = last_job_id()
    done = kliko("run", chain, "--plain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [j["nodes"] for j in jobs_after(first)] == ["bare1"]
    assert (tmp_path / "shared-cache" / "slurm" / "images").is_dir()


# ch-run binds read-write only. Writes into the Measurement Set it is given, as WSClean writes
# MODEL_DATA, and says whether that worked (it may: into its own copy).
SCRIBBLE = r"""#!/bin/sh
if echo MODEL_DATA >> /input/meerkat_2.5h.MS/table.info 2>/dev/null; then
    echo "scribble: wrote into /input"
else
    echo "scribble: refused"
fi
echo done > /output/done.txt
"""


@pytest.mark.usefixtures("compat_images")
def test_on_charliecloud_a_step_copies_or_writes_into_its_input_and_the_entry_is_unchanged(
    kliko: KlikoCli, tmp_path: Path, kliko_image_builder: Callable[[Path, str, str], str]
) -> None:
    """Kliko's meqtree-pipeliner and wsclean copy /input and write into the copy; a tool may
    write into its input itself. On a node without Docker the container gets a copy of each
    input, so both work and the cached entries stay as they were."""
    spec = "schema_version: 3\nname: scribble\nio: split\nsections: []\n"
    scribble = kliko_image_builder(tmp_path / "scribble", spec, SCRIBBLE)
    try:
        chain = write_chain(
            tmp_path,
            "steps:\n"
            "  simms: {image: kliko-compat/simms, params: {tel: meerkat, synthesis-time: 2.5}}\n"
            "  meqtree: {image: kliko-compat/meqtree-pipeliner, inputs: [simms]}\n"
            "  wsclean: {image: kliko-compat/wsclean, params: {weight: natural}, "
            "inputs: [meqtree]}\n"
            f"  scribble: {{image: {scribble}, inputs: [simms]}}\n",
        )
        first = last_job_id()
        done = kliko(
            "run", chain, "--backend", "slurm", "--partition", "bare", "--plain",
            "--cache-dir", "c", "--out", "out",
        )  # fmt: skip
    finally:
        subprocess.run(["docker", "rmi", "-f", scribble], capture_output=True)

    assert done.returncode == 0, done.stdout + done.stderr
    assert {j["nodes"] for j in jobs_after(first)} == {"bare1"}
    assert "scribble: wrote into /input" in done.stdout, "it wrote into its own copy"
    assert compat.contents(tmp_path / "out" / "meqtree") == compat.meqtree_output()
    assert compat.contents(tmp_path / "out" / "wsclean") == compat.wsclean_output("natural")
    assert compat.contents(tmp_path / "out" / "simms") == compat.simms_output()
    verified = kliko("cache", "verify", "--cache-dir", "c")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    copies = list((tmp_path / "c").rglob("read-only-copies"))
    assert copies == [], "the copies are deleted after each job"
