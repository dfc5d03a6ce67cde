"""The library surface: run a chain from an asyncio application (or anyio on asyncio), or
synchronously. The Docker runtime needs asyncio (aiodocker); under trio a run fails at once.

>>> result = await kliko_async.run("chain.yaml", jobs=4)            # doctest: +SKIP
>>> async with kliko_async.open_run(chain) as run:                   # doctest: +SKIP
...     async for event in run.events():
...         print(event.kind)
>>> kliko_async.run_chain([("example/gen", {"n": 3}), ("example/upper", {})])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.abc import TaskGroup

from kliko_async.cache.holds import RunHold
from kliko_async.cache.paramfiles import FileSnapshots
from kliko_async.cache.store import Cache, default_cache_dir
from kliko_async.cache.upkeep import clean_stale_staging
from kliko_async.collector import fewer_collections
from kliko_async.display.runrecord import RunRecorder, write_record
from kliko_async.engine import exports
from kliko_async.engine.bus import ConsumerFeed, EventBus, EventSubscription
from kliko_async.engine.explain import ManifestIndex, StepExplanation, explain_plan
from kliko_async.engine.images import ImageResolver, KlikoImage
from kliko_async.engine.leftovers import remove_leftovers
from kliko_async.engine.plan import Plan, plan_chain
from kliko_async.engine.resources import ResourcePool, machine_cpus
from kliko_async.engine.scheduler import Scheduler
from kliko_async.engine.signals import ended_cleanly_by_sigterm
from kliko_async.errors import KlikoError
from kliko_async.events import Event, EventConsumer, RunFinished
from kliko_async.model.chain import RUN_CHAIN_SOURCE, Chain, chain_from_pairs, load_chain
from kliko_async.results import RunResult
from kliko_async.runtime.base import Runtime
from kliko_async.runtime.engineurl import engine_url_of
from kliko_async.runtime.inflight import InFlight, track, untrack

if TYPE_CHECKING:
    from kliko_async.runtime.slurm.options import SlurmOptions

T = TypeVar("T")

Backend = Literal["docker", "slurm"]
"""Where steps run: the local Docker Engine, or Slurm jobs on a cluster."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class ChainRun:
    """One run of a chain in progress: subscribe to its events, then read its result."""

    def __init__(self, bus: EventBus, feed: ConsumerFeed | None = None) -> None:
        self._bus = bus
        self._result: RunResult | None = None
        self.plan: Plan | None = None
        self.feed = feed
        """How ``on_event`` was fed: its error if it failed, the log lines it was not shown."""

    def events(self, max_log_lines: int = 10_000) -> EventSubscription:
        """An async iterator over this run's events, ending after ``RunFinished``.

        Subscribe right after ``open_run`` returns, before the first ``await``, to see every event.
        """
        return self._bus.subscribe(max_log_lines)

    @property
    def result(self) -> RunResult:
        if self._result is None:
            raise RuntimeError("the run has not finished yet")
        return self._result


@asynccontextmanager
async def open_run(
    chain: Chain | str | os.PathLike[str],
    *,
    runtime: Runtime | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    keep_going: bool = False,
    force: Collection[str] = (),
    no_cache: bool = False,
    out: str | os.PathLike[str] | None = None,
    on_event: EventConsumer | Callable[[Event], None] | None = None,
    on_event_error: Callable[[BaseException], None] | None = None,
    run_id: str | None = None,
    backend: Backend = "docker",
    slurm: SlurmOptions | None = None,
) -> AsyncIterator[ChainRun]:
    """Start running ``chain`` in the background; leaving the block waits for the end.

    ``backend="slurm"`` runs every step as a Slurm job (``slurm``: partition, sbatch options,
    engine); the cache must then be on a filesystem every node sees at the same path.

    Errors found before any container starts (bad chain, image, parameters) are raised from the
    ``async with`` block as :class:`~kliko_async.errors.KlikoError`. Step failures are not
    raised: see ``run.result`` (``ok``, ``raise_for_failures()``).

    ``on_event`` gets every event in a worker thread of its own (see
    :class:`~kliko_async.events.EventConsumer`); it can neither stall nor break the run. If it
    raises, it gets no more events and ``on_event_error(error)`` is called on the event loop.
    """
    bus = EventBus()
    feed = None
    if on_event is not None:
        feed = bus.on_event(on_event, on_failure=on_event_error)
    handle = ChainRun(bus, feed)

    failure: list[KlikoError] = []

    async def execute() -> None:
        # Reading, planning and running a big chain keep millions of objects: fewer passes
        # of the garbage collector over them (see kliko_async.collector).
        with fewer_collections():
            async with bus.delivering():  # leaving it closes the bus and lets consumers finish
                try:
                    handle._result = await _execute(
                        chain,
                        bus=bus,
                        handle=handle,
                        runtime=runtime,
                        cache_dir=cache_dir,
                        jobs=jobs,
                        keep_going=keep_going,
                        force=force,
                        no_cache=no_cache,
                        out=out,
                        run_id=run_id or new_run_id(),
                        backend=backend,
                        slurm=slurm,
                    )
                except KlikoError as error:
                    failure.append(error)  # raised below, outside the task group, not in a group

    tg: TaskGroup
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(execute)
            yield handle
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        # The caller's own error in the block (or a crash of the run): raise it as it is, not
        # wrapped in the task group's ExceptionGroup, and without the group as its context.
        error = group.exceptions[0]
        context = error.__context__
        try:
            raise error
        finally:
            error.__context__ = context
    if failure:
        raise failure[0]


async def run(chain: Chain | str | os.PathLike[str], **options: Any) -> RunResult:
    """Run ``chain`` to the end and return its result; options as for :func:`open_run`."""
    async with open_run(chain, **options) as handle:
        pass
    return handle.result


async def dry_run(
    chain: Chain | str | os.PathLike[str],
    *,
    runtime: Runtime | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: Collection[str] = (),
    no_cache: bool = False,
    build: bool = False,
) -> Plan:
    """Check ``chain`` and compute its plan (keys, cache hits), changing nothing.

    No step runs, no image is built (see ``Plan.unbuilt``) and nothing is written to the cache
    folder; only short-lived probe containers read kliko.yml files not seen before. With
    ``build``, ``build:`` steps are built as a run would (and kliko.yml files remembered), so
    that every step has its key.
    """
    with fewer_collections():  # as for a run
        loaded = chain if isinstance(chain, Chain) else await _load_off_loop(Path(chain))
        cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
        async with open_runtime(runtime) as rt:
            resolver = ImageResolver(rt, cache.specs_dir, remember=build)
            return await plan_chain(
                loaded, resolver=resolver, cache=cache, force=force, no_cache=no_cache, build=build
            )


async def explain(
    chain: Chain | str | os.PathLike[str],
    steps: Collection[str] = (),
    *,
    runtime: Runtime | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: Collection[str] = (),
    no_cache: bool = False,
    build: bool = True,
) -> list[StepExplanation]:
    """Why each of ``steps`` (a matrix step's name means all its expansions; none: every step)
    would run, or which cache entry it comes from. Plans as :func:`dry_run`, starts nothing;
    ``build:`` steps are built (to say how their image changed) unless ``build`` is False."""
    loaded = chain if isinstance(chain, Chain) else await _load_off_loop(Path(chain))
    names = loaded.select(steps) if steps else None
    plan = await dry_run(
        loaded, runtime=runtime, cache_dir=cache_dir, force=force, no_cache=no_cache, build=build
    )
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    index = await anyio.to_thread.run_sync(ManifestIndex.of_cache, cache)
    return explain_plan(plan, index, names)


def run_chain(
    steps: Sequence[tuple[str, Mapping[str, Any]]],
    docker_client: object = None,
    kliko_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
) -> RunResult:
    """Kliko's ``run_chain([(image, params), ...])``: a linear chain, run synchronously.

    Each step consumes the one before it. Raises :class:`~kliko_async.errors.RunFailed` when a
    step fails. Step outputs are at ``result.steps[name].output`` (cache folders: change none).
    Kliko 0.8's own arguments keep working: ``docker_client`` (a docker-py client, or an
    engine URL) says which Docker Engine to use, and ``kliko_dir`` is the cache folder.
    """
    chain = chain_from_pairs(steps)
    url = engine_url_of(docker_client)
    folder = cache_dir if cache_dir is not None else kliko_dir

    async def main() -> RunResult:
        return await on_engine(
            url, lambda engine: run(chain, runtime=engine, cache_dir=folder, out=out, jobs=jobs)
        )

    result = run_blocking(main)
    result.raise_for_failures()
    return result


async def on_engine(url: str | None, work: Callable[[Runtime | None], Awaitable[T]]) -> T:
    """``work`` on the Docker Engine at ``url`` (closed afterwards), or on the default one."""
    if url is None:
        return await work(None)
    needs_asyncio()
    from kliko_async.runtime.docker import DockerRuntime  # only the Docker path needs aiodocker

    engine = DockerRuntime(url)
    try:
        return await work(engine)
    finally:
        with anyio.CancelScope(shield=True):
            await engine.aclose()


def run_blocking(function: Callable[[], Awaitable[T]]) -> T:
    """Run an async function to the end from synchronous code.

    Where an event loop already runs in this thread (Jupyter, Luigi's worker), it runs on a
    fresh loop in a helper thread instead, since loops do not nest. SIGTERM stops the work
    cleanly before it ends the process (``engine.signals.ended_cleanly_by_sigterm``).
    """
    box: list[T] = []

    async def main() -> None:
        # The result is kept out of the main task: on Python 3.11, asyncio.run's clean-up
        # formats that task's repr, result included, while restoring the SIGINT handler (the
        # enum lookup of the old handler fails, and its error message is built): for the plan
        # of a 10,000-step chain, seconds of pydantic reprs thrown away.
        box.append(await ended_cleanly_by_sigterm(function))

    try:
        nested = asyncio.get_running_loop() is not None
    except RuntimeError:  # no loop here, the common case: run below, not in this handler
        nested = False  # (every error of the work said "no running event loop" first)
    if not nested:
        anyio.run(main)
    else:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kliko-async") as pool:
            pool.submit(anyio.run, main).result()
    return box[0]


async def export_outputs(
    result: RunResult, out: Path, *, emit: Callable[[Event], None] | None = None
) -> list[str]:
    """Copy every finished step's output to ``out/<step>/``, in a worker thread; the steps that
    did not finish whose ``out/<step>`` still holds an earlier export.

    The event loop stays free while big outputs are copied (other runs' containers, displays,
    Ctrl-C); ``emit`` sees :class:`~kliko_async.events.ExportStarted` and one
    :class:`~kliko_async.events.OutputExported` per step. Only earlier exports are replaced
    (see :mod:`kliko_async.engine.exports`); cancelling stops the copy between two files, or
    two 64 MiB pieces of a big one.
    """

    def send(event: Event) -> None:  # from the worker thread to the loop, where consumers are
        if emit is not None:
            anyio.from_thread.run_sync(emit, event)

    def in_thread() -> list[str]:
        return exports.export_outputs(
            result, out, emit=send, between_files=anyio.from_thread.check_cancelled
        )

    return await anyio.to_thread.run_sync(in_thread)


async def read_image(
    ref: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    runtime: Runtime | None = None,
) -> KlikoImage:
    """The Kliko image ``ref`` names, with its kliko.yml (remembered in the cache folder)."""
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    async with open_runtime(runtime) as rt:
        return await ImageResolver(rt, cache.specs_dir).resolve(ref)


@asynccontextmanager
async def open_runtime(runtime: Runtime | None, *, close: bool = False) -> AsyncIterator[Runtime]:
    """``runtime`` as given (closed on leaving if ``close``), or a Docker runtime that is
    closed on leaving (even if cancelled)."""
    if runtime is not None:
        try:
            yield runtime
        finally:
            if close:
                with anyio.CancelScope(shield=True):
                    await runtime.aclose()
        return
    needs_asyncio()
    from kliko_async.runtime.docker import DockerRuntime  # only the Docker path needs aiodocker

    docker = DockerRuntime()
    try:
        yield docker
    finally:
        with anyio.CancelScope(shield=True):
            await docker.aclose()


def needs_asyncio() -> None:
    """Refuse at once, in one clear error, to talk to the Docker Engine from an event loop
    that is not asyncio's (trio): aiodocker, which the Docker runtime is built on, needs one.
    The engine itself is anyio only: a runtime passed in runs on any anyio backend."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise KlikoError(
            "kliko-async talks to the Docker Engine through aiodocker, which needs an asyncio "
            "event loop, and this code runs on another one (trio?)",
            where="kliko_async.run / open_run / dry_run / explain / read_image",
            hint="Run it under asyncio (anyio.run(main, backend='asyncio')), or call "
            "kliko_async.run_chain from a worker thread (anyio.to_thread.run_sync).",
        ) from None


async def _execute(
    chain: Chain | str | os.PathLike[str],
    *,
    bus: EventBus,
    handle: ChainRun,
    runtime: Runtime | None,
    cache_dir: str | os.PathLike[str] | None,
    jobs: int | None,
    keep_going: bool,
    force: Collection[str],
    no_cache: bool,
    out: str | os.PathLike[str] | None,
    run_id: str,
    backend: Backend = "docker",
    slurm: SlurmOptions | None = None,
) -> RunResult:
    if runtime is None and backend == "docker":
        needs_asyncio()  # before anything is touched
    loaded = chain if isinstance(chain, Chain) else await _load_off_loop(Path(chain))
    if out is not None:
        exports.check_export_targets(Path(out), loaded.steps)
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    cache.ensure_writable()
    pool: ResourcePool | None = None
    owned = runtime is None and backend == "slurm"
    if owned:
        from kliko_async.runtime.slurm.runtime import SlurmRuntime

        runtime = slurm_runtime = SlurmRuntime(cache.root, slurm)
        await slurm_runtime.check_shared_cache([d.path for d in loaded.data.values()])
        jobs = jobs or await slurm_runtime.total_cpus()
        pool = ResourcePool(cpus=1 << 20, memory=1 << 62, gpus=1 << 20)  # Slurm accounts
    files = FileSnapshots(cache.private_path(f"files-{run_id}"), cache.root)
    finished: list[RunFinished] = []
    recorder = RunRecorder(run_id, "" if loaded.source == RUN_CHAIN_SOURCE else loaded.source)

    def announce(event: Event) -> None:
        recorder(event)
        bus.emit(event)

    def emit(event: Event) -> None:
        # The run's end is announced after the export, which may still fail it.
        if isinstance(event, RunFinished):
            finished.append(event)
        else:
            announce(event)

    exported = False
    stale: list[str] = []  # steps that did not finish whose --out folder is an earlier export
    copies = track(InFlight("copies of file parameters", folder=files.folder))
    hold = RunHold(cache.root, run_id)  # what the run made or found: gc keeps it to the end
    try:
        async with open_runtime(runtime, close=owned) as rt:
            await remove_leftovers(rt)
            # After the leftovers are stopped: a killed run's job may still write into its
            # staging folder. Off the loop: a cache with many stale folders takes a while (a
            # host application's other tasks, and Ctrl-C, stay served meanwhile).
            await anyio.to_thread.run_sync(clean_stale_staging, cache)
            resolver = ImageResolver(rt, cache.specs_dir)
            plan = await plan_chain(
                loaded,
                resolver=resolver,
                cache=cache,
                force=force,
                no_cache=no_cache,
                emit=announce,
                snapshots=files,
                machine=pool,  # on Slurm, the cluster's scheduler judges what fits
            )
            handle.plan = plan
            recorder.know_plan(plan)
            scheduler = Scheduler(
                plan,
                runtime=rt,
                cache=cache,
                emit=emit,
                run_id=run_id,
                jobs=jobs or machine_cpus(),
                keep_going=keep_going,
                wants_log_lines=bus.wants_log_lines,
                log_lines_per_second=bus.log_lines_per_second,
                pool=pool,
                hold=hold,
            )
            result = await scheduler.run()
        if out is not None:
            stale = await export_outputs(result, Path(out), emit=bus.emit)
        exported = True
    finally:
        with anyio.CancelScope(shield=True):  # runs even while being cancelled
            await anyio.to_thread.run_sync(files.discard)
        hold.close()
        for event in finished:
            if not exported and event.ok:
                event = event.model_copy(update={"ok": False, "outputs_copied": False})
            if stale:
                event = event.model_copy(update={"stale_outputs": stale})
            announce(event)
        untrack(copies)
        with contextlib.suppress(OSError):  # the record is for looking back; never fails a run
            write_record(recorder.finish(), cache.root)
    return result


async def _load_off_loop(path: Path) -> Chain:
    """Load a chain file in a worker thread: reading a file (on a slow disk, or one the user got
    wrong) never blocks the event loop, so Ctrl-C and other tasks still get through."""
    return await anyio.to_thread.run_sync(load_chain, path)
