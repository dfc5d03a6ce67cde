"""Shared pieces of the benchmark suite: configuration, timing, medians, the table and JSON.

Every scenario measures its own floor (the same work done with bare aiodocker, ``cp -r`` or
nothing at all) in the same process run, interleaved with kliko-async and repeated, so that a
busy shared machine slows both sides alike. Results are medians; ratios are kliko-async over
floor.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.text import TextReceiveStream

import kliko_async

if TYPE_CHECKING:
    from kliko_async.model.chain import Chain
    from kliko_async.results import RunResult

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCH_LABEL = "io.kliko-async.bench"
"""Label on every container the floors start, so that leftovers can be found and removed."""
MANAGED_LABEL = "io.kliko-async.managed=1"
"""Label kliko-async puts on every container it creates (probes included)."""


# -- configuration ------------------------------------------------------------------------------


@dataclass
class Config:
    """How big and how often: ``quick`` shrinks every scenario to a smoke run."""

    quick: bool = False
    reps: int | None = None
    """Overrides every scenario's number of repetitions when set."""
    workdir: Path = field(default_factory=lambda: Path("/tmp"))
    """A private temporary folder for caches, outputs and build contexts."""
    smoke: bool = False
    """Smaller still than ``quick`` (the test suite's smoke tests): each scenario's floor and
    check run end to end on a tiny size, and the numbers mean nothing."""

    def size(self, full: int, quick: int, smoke: int | None = None) -> int:
        if self.smoke and smoke is not None:
            return smoke
        return quick if self.quick or self.smoke else full

    def repeats(self, full: int, quick: int) -> int:
        if self.reps is not None:
            return self.reps
        return quick if self.quick or self.smoke else full

    def tmp(self, name: str) -> Path:
        """A fresh, empty folder ``name`` under the work folder."""
        path = self.workdir / name
        remove_tree(path)
        path.mkdir(parents=True)
        return path


# -- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: a metric measured on the floor and/or on kliko-async."""

    metric: str
    unit: str
    floor: float | None = None
    kliko: float | None = None
    target: str = ""
    ok: bool | None = None
    """Whether the target is met; None when there is no target."""

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.kliko is None or self.floor == 0 or self.unit == "count":
            return None
        return self.kliko / self.floor


@dataclass
class ScenarioResult:
    name: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    """Every repetition's raw value, by sample name (medians are in ``rows``)."""
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0

    def add(self, sample: str, value: float) -> None:
        self.samples.setdefault(sample, []).append(value)

    def median(self, sample: str) -> float:
        return median(self.samples[sample])

    def row(
        self,
        metric: str,
        unit: str,
        *,
        floor: float | None = None,
        kliko: float | None = None,
        target: str = "",
        ok: bool | None = None,
    ) -> Row:
        row = Row(metric=metric, unit=unit, floor=floor, kliko=kliko, target=target, ok=ok)
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["ratio"] = row.ratio
        return data


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no samples")
    return float(statistics.median(values))


# -- timing -------------------------------------------------------------------------------------


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.elapsed`` (seconds, perf_counter)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


class EventClock:
    """An ``on_event`` callback noting when (perf_counter) each kind of event first and last came.

    With ``keep`` it also keeps the events that are not log lines, for per-step details (a
    memory measurement must not keep them: they would be counted as kliko-async's).
    """

    def __init__(self, *, keep: bool = True) -> None:
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.events: list[Any] = []
        self._keep = keep

    def __call__(self, event: Any) -> None:
        now = time.perf_counter()
        kind = str(event.kind)
        self.first.setdefault(kind, now)
        self.last[kind] = now
        if self._keep and kind != "log_line":
            self.events.append(event)


async def interleaved(
    reps: int, variants: Sequence[tuple[str, Callable[[int], Awaitable[None]]]]
) -> None:
    """Run every variant ``reps`` times, alternating the order (ABBA) to cancel drift."""
    for rep in range(reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name, variant in order:
            progress(f"  rep {rep + 1}/{reps}: {name}")
            await variant(rep)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- processes and the Docker Engine ------------------------------------------------------------


async def run_process(
    command: Sequence[str], *, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(list(command), check=check, cwd=cwd)


async def timed_script(
    result: ScenarioResult, key: str, script: Path, work: Path, *args: str
) -> None:
    """Run the floor ``script`` with ``work`` and ``args`` (it must succeed) and add its wall
    time to ``result`` under ``key``."""
    started = time.perf_counter()
    await anyio.run_process([str(script), str(work), *args], check=True)
    result.add(key, time.perf_counter() - started)


def script_file(cfg: Config, name: str, text: str) -> Path:
    """An executable script ``name`` in the work folder."""
    path = cfg.workdir / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def engine_version() -> str:
    done = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


async def engine_events(since: float, until: float, *filters: str) -> list[dict[str, Any]]:
    """The engine's events between two Unix times, as ``docker events --since/--until`` gives.

    ``filters`` are ``docker events --filter`` values such as ``event=create``.
    """
    command = ["docker", "events", "--since", f"{since:.6f}", "--until", f"{until:.6f}"]
    for item in filters:
        command += ["--filter", item]
    command += ["--format", "{{json .}}"]
    done = await run_process(command)
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


class EngineEvents:
    """The engine's events while the block runs, streamed live from ``docker events``.

    ``docker events --since/--until`` alone replays only the engine's last 256 events, too few
    for a run of hundreds of containers; a live stream sees them all. ``filters`` are
    ``docker events --filter`` values such as ``event=create``.
    """

    def __init__(self, *filters: str) -> None:
        self.filters = filters
        self.events: list[dict[str, Any]] = []
        self._process: Process | None = None
        self._group: TaskGroup | None = None
        self._since = 0.0

    async def __aenter__(self) -> EngineEvents:
        self._since = time.time()
        command = ["docker", "events", "--since", f"{self._since:.6f}", "--format", "{{json .}}"]
        for item in self.filters:
            command += ["--filter", item]
        self._process = await anyio.open_process(command, stderr=subprocess.DEVNULL)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._read)
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        pending = ""
        async for chunk in TextReceiveStream(self._process.stdout):
            pending += chunk
            *lines, pending = pending.split("\n")
            self.events.extend(json.loads(line) for line in lines if line.strip())

    async def __aexit__(self, *exc: object) -> None:
        until_ns = time.time_ns()
        await anyio.sleep(0.5)  # events of the last moment may still be on their way
        assert self._process is not None and self._group is not None
        self._process.terminate()
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)
        await self._process.aclose()
        self.events = [e for e in self.events if int(e.get("timeNano", 0)) <= until_ns]


async def container_seconds(since: float, until: float, container_id: str) -> float | None:
    """Seconds from the engine's ``start`` to its ``die`` event of one container."""
    found = await engine_events(
        since, until, f"container={container_id}", "event=start", "event=die"
    )
    times = {str(e.get("status") or e.get("Action")): int(e["timeNano"]) for e in found}
    if "start" not in times or "die" not in times:
        return None
    return (times["die"] - times["start"]) / 1e9


def remove_bench_containers() -> int:
    """Remove every container a floor left behind (there should be none)."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}"],
        capture_output=True,
        text=True,
    )
    ids = done.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
    return len(ids)


def managed_containers() -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={MANAGED_LABEL}"],
        capture_output=True,
        text=True,
    )
    return done.stdout.split()


def ensure_example_images() -> None:
    """Build kliko-async/busybox and example/* if one of the images used here is missing."""
    wanted = ["kliko-async/busybox", "example/sleep", "example/flood"]
    done = subprocess.run(["docker", "image", "inspect", *wanted], capture_output=True, text=True)
    if done.returncode != 0:
        progress("building the example images (scripts/build-images)")
        subprocess.run([str(ROOT / "scripts" / "build-images")], check=True)


def parameters_json(values: dict[str, Any]) -> str:
    """/parameters.json as kliko-async writes it (sorted keys, two-space indent)."""
    return json.dumps(values, sort_keys=True, indent=2) + "\n"


SLEEP_PARAMS_SH = r"""params_json() { # $1: seconds, $2: tag; as kliko-async writes it
    printf '{\n  "seconds": %s,\n  "tag": "%s"\n}\n' "$1" "$2"
}
"""
"""A shell function for the floor scripts: example/sleep's /parameters.json, sorted keys, two
spaces, one key a line. The image's param.sh reads nothing else: from a one-line
``{"seconds": 1, ...}`` it reads no value, sleeps 0 s and writes ``slept  `` (the Slurm floors
did, until 2026-12-05, and so measured containers that never slept)."""


def check_slept(output: Path, seconds: float, tag: str, who: str) -> None:
    """That an example/sleep container with ``seconds`` and ``tag`` did its work: its
    ``slept.txt`` in ``output`` names both (it is written after the sleep, from the values the
    image read). Raises AssertionError naming ``who`` and what was found otherwise."""
    path = output / "slept.txt"
    try:
        words = path.read_text().split()
    except OSError as error:
        raise AssertionError(f"{who}: no {path} ({error.strerror})") from None
    try:
        slept = float(words[1]) if len(words) == 3 and words[::2] == ["slept", tag] else None
    except ValueError:
        slept = None
    if slept != seconds:
        raise AssertionError(
            f"{who}: {path} says {' '.join(words)!r}, not 'slept {seconds:g} {tag}': "
            "the container did not read the parameters it was given"
        )


def check_steps_slept(outcome: RunResult, chain: Chain) -> None:
    """:func:`check_slept` for every step of a run of example/sleep steps, by its params."""
    for name, step in outcome.steps.items():
        params = chain.steps[name].params
        assert step.output is not None, f"kliko-async's step {name} has no output"
        check_slept(step.output, params["seconds"], params["tag"], f"kliko-async's step {name}")


def invoking_user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


# -- files --------------------------------------------------------------------------------------


def remove_tree(path: Path) -> None:
    """Delete a tree, read-only cache entries included; missing is fine."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)
    os.chmod(path, 0o700)
    shutil.rmtree(path)


def tree_stats(root: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``root``."""
    files = 0
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            files += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return files, total


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


# -- the table and the JSON file ----------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if unit == "count" or (float(value).is_integer() and abs(value) >= 100):
        return f"{value:,.0f}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2g}"


def table(results: Sequence[ScenarioResult]) -> str:
    """A Markdown table of every row of every scenario (medians)."""
    header = ["scenario", "metric", "unit", "floor", "kliko-async", "ratio", "target", "ok"]
    lines = [header]
    for result in results:
        if result.error is not None:
            lines.append([result.name, f"ERROR: {result.error}", "", "", "", "", "", "no"])
            continue
        for row in result.rows:
            ratio = row.ratio
            lines.append(
                [
                    result.name,
                    row.metric,
                    row.unit,
                    fmt(row.floor, row.unit),
                    fmt(row.kliko, row.unit),
                    f"{ratio:.2f}x" if ratio is not None else "",
                    row.target,
                    "" if row.ok is None else ("yes" if row.ok else "NO"),
                ]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if number == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    package = Path(kliko_async.__file__).resolve().parent
    in_tree = package.is_relative_to(ROOT / "src")
    return {
        "kliko_async": str(package),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "load_avg": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit + ("-dirty(src)" if dirty and in_tree else ""),
        "kliko_async_from": "the working tree" if in_tree else "a copy outside the working tree",
    }


def write_json(path: Path, results: Sequence[ScenarioResult], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "scenarios": [r.to_json() for r in results]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
