"""Turn a chain into a plan before any container starts: images, parameters, cache keys.

Every step's image is resolved (or built), its parameters are validated against its kliko.yml,
and its cache key is computed from everything that determines its output, including the keys of
its inputs, so a change anywhere upstream changes every key below it. All problems of all steps
are reported together.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict

from kliko_async.cache.datahash import (
    DATA_KEY_PREFIX,
    STAT_CACHE,
    DataError,
    StatCache,
    digest_data,
)
from kliko_async.cache.entry import CacheEntry
from kliko_async.cache.key import LONE_INPUT, KeyIngredients, cache_key
from kliko_async.cache.paramfiles import FileSnapshots, hash_files
from kliko_async.cache.store import Cache
from kliko_async.engine.images import (
    KLIKO_COMMAND,
    ImageResolver,
    KlikoImage,
    check_build_folder,
)
from kliko_async.engine.problems import PlanProblems
from kliko_async.engine.resources import ResourcePool
from kliko_async.engine.workspace import each_in_a_folder
from kliko_async.errors import ChainError, KlikoError, RuntimeUnavailable
from kliko_async.events import DataKeyed, DataKeying, Event, ImageBuilding, ImageBuilt
from kliko_async.model.chain import RUN_CHAIN_SOURCE, Chain, Step
from kliko_async.model.chainmodel import matrix_steps
from kliko_async.model.parameters import ValidatedParameters, validate_parameters


class PlannedStep(BaseModel):
    """One step, resolved: what runs, with which parameters, under which cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: Step
    image: KlikoImage
    params: ValidatedParameters
    ingredients: KeyIngredients
    key: str
    cached: CacheEntry | None = None
    forced: bool = False

    @property
    def name(self) -> str:
        return self.step.name


class PlannedData(BaseModel):
    """A data input, checked and keyed: the host file or folder steps read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: Path
    """The file or folder itself (links to it resolved): what is mounted."""
    key: str
    """What its consumers' keys hold for it: ``data:`` and the digest of its content."""
    files: int
    size: int
    hashed_files: int
    """How many files were read to key it this time (the others' stat had not changed)."""


class Plan(BaseModel):
    """A checked chain: steps in a valid order, each with its key and cache state."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    order: list[str]
    steps: dict[str, PlannedStep]
    data: dict[str, PlannedData] = {}
    unbuilt: dict[str, str] = {}
    """Steps a dry run cannot key without building an image first: why, by step name (only
    plans made with ``build=False`` have any; they are in ``order`` but not in ``steps``)."""

    @property
    def to_run(self) -> list[str]:
        return [n for n in self.order if n in self.unbuilt or self.steps[n].cached is None]


CHECKPOINT_EVERY = 256
"""Planning lets other tasks (and a cancellation) in after this many steps."""


async def plan_chain(
    chain: Chain,
    *,
    resolver: ImageResolver,
    cache: Cache | None,
    force: Collection[str] = (),
    no_cache: bool = False,
    emit: Callable[[Event], None] | None = None,
    snapshots: FileSnapshots | None = None,
    machine: ResourcePool | None = None,
    build: bool = True,
) -> Plan:
    """Resolve, validate and key every step of ``chain``; raise one error listing all problems.

    ``force`` names steps to re-run even when cached; their downstream steps re-run too.
    ``no_cache`` re-runs every step (results are still stored). With ``snapshots``, file
    parameters are copied there and keyed by the copies the containers will see; without
    (a dry run), they are hashed where they are. A step asking for more CPUs or memory than
    ``machine`` (default: this machine) has is refused, since it could never run. With
    ``build=False`` (a dry run) no image is built: a ``build:`` step uses the image an earlier
    build of its folder as it is now gave, or it and the steps below it are listed in
    ``Plan.unbuilt``.
    """
    check_resources(chain.steps.values(), machine or ResourcePool(), where=chain.source)
    groups = set(matrix_steps(chain.steps.values()).values())
    unknown = sorted(set(force) - set(chain.steps) - groups)
    if unknown:
        raise ChainError(
            f"--force names unknown step(s): {', '.join(unknown)}",
            where=chain.source,
            hint=f"Steps are: {', '.join([*chain.steps, *sorted(groups)])}.",
        )
    forced = set(chain.select(force)) if force else set()
    for name in force:
        forced |= chain.downstream(name)
    base_dir = Path.cwd() if chain.source == RUN_CHAIN_SOURCE else Path(chain.source).parent
    base_dir = base_dir.resolve()
    order = chain.topological_order()
    data = await plan_data(chain, cache, emit, remember=build)
    # First reads of images start a probe container each: do them all at once, not in turn.
    await resolver.prefetch(s.image for s in chain.steps.values() if s.image is not None)
    planned: dict[str, PlannedStep] = {}
    unbuilt: dict[str, str] = {}
    problems = PlanProblems(chain)
    for index, name in enumerate(order):
        if index % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            await anyio.lowlevel.checkpoint()  # a huge chain: Ctrl-C gets in while planning
        step = chain.steps[name]
        waiting = [i for i in step.inputs if i in unbuilt]
        if waiting:
            unbuilt[name] = f"its input '{waiting[0]}' needs its image built first"
            continue
        try:
            if step.build is not None and not build:
                found = await resolver.find_built(step.build)
                if found is None:
                    unbuilt[name] = f"its image would be built from {step.build}"
                    continue
                image = found
            else:
                image = await _image_of(step, resolver, emit)
        except RuntimeUnavailable:
            raise  # no engine: the same for every step, so said once
        except KlikoError as error:
            problems.of_image(error, step)
            continue
        where = f"step '{name}' (image {image.ref})"
        try:
            params = validate_parameters(image.spec, step.params, where=where, base_dir=base_dir)
            if params.files:
                # Copying or hashing a big file takes a while: off the loop, so Ctrl-C still works.
                take = functools.partial(
                    snapshots.take if snapshots else hash_files, params, where=where
                )
                params = await anyio.to_thread.run_sync(take, abandon_on_cancel=True)
        except KlikoError as error:
            problems.of_step(error, step, image.ref, where)
            continue
        if any(i not in planned and i not in data for i in step.inputs):
            continue  # an input is already reported as broken
        ingredients = KeyIngredients(
            image_id=image.id,
            command=KLIKO_COMMAND,
            io=image.spec.io,
            parameters=params.values,
            file_hashes=_file_hashes(params),
            inputs=_input_keys(step, planned, data),
            input_layout="folders" if _in_folders(step) else "whole",
            env=step.env,
        )
        key = cache_key(ingredients)
        is_forced = no_cache or name in forced
        cached = None if is_forced or cache is None else cache.lookup(key)
        planned[name] = PlannedStep(
            step=step,
            image=image,
            params=params,
            ingredients=ingredients,
            key=key,
            cached=cached,
            forced=is_forced,
        )
    problems.raise_any()
    return Plan(source=chain.source, order=order, steps=planned, unbuilt=unbuilt, data=data)


def _in_folders(step: Step) -> bool:
    return each_in_a_folder(len(step.inputs), in_folders=step.inputs_in_folders)


async def plan_data(
    chain: Chain,
    cache: Cache | None,
    emit: Callable[[Event], None] | None = None,
    *,
    remember: bool = True,
) -> dict[str, PlannedData]:
    """Check and key every data input of ``chain``, each in a worker thread (a big folder takes
    a while the first time), saying so in events; one ChainError names every one that cannot
    be used. The stat cache is read, and written only when ``remember`` (not by a dry run,
    which writes nothing)."""
    if not chain.data:
        return {}
    stats = StatCache(cache.root / STAT_CACHE if cache is not None else None)
    found: dict[str, PlannedData] = {}
    problems: list[str] = []
    for name, item in chain.data.items():
        if emit is not None:
            emit(DataKeying(data=name, path=str(item.path)))
        began = time.monotonic()
        digest = functools.partial(digest_data, item.path, stats)
        try:
            keyed = await anyio.to_thread.run_sync(digest, abandon_on_cancel=True)
        except DataError as error:
            problems.append(f"data {name!r}: {error}")
            continue
        found[name] = PlannedData(
            name=name,
            path=keyed.root,
            key=DATA_KEY_PREFIX + keyed.digest,
            files=keyed.files,
            size=keyed.size,
            hashed_files=keyed.hashed_files,
        )
        if emit is not None:
            emit(
                DataKeyed(
                    data=name,
                    path=str(item.path),
                    files=keyed.files,
                    size_bytes=keyed.size,
                    read_files=keyed.hashed_files,
                    read_bytes=keyed.hashed_bytes,
                    duration_s=time.monotonic() - began,
                )
            )
    if remember:
        await anyio.to_thread.run_sync(stats.save)
    if problems:
        raise ChainError(
            "; ".join(problems),
            where=chain.source,
            hint="Give data as files and folders the steps may read, holding only files, "
            "folders and links that stay inside.",
        )
    return found


def _input_keys(
    step: Step, planned: Mapping[str, PlannedStep], data: Mapping[str, PlannedData]
) -> dict[str, str]:
    """The key ingredient of ``step``'s inputs, named as the container sees them: a lone input
    (all of /input or /work) as ``/input``, whichever step made it; inputs in folders by the
    folder's name (the step's)."""

    def key_of(name: str) -> str:
        return planned[name].key if name in planned else data[name].key

    if _in_folders(step):
        return {name: key_of(name) for name in step.inputs}
    return {LONE_INPUT: key_of(step.inputs[0])} if step.inputs else {}


def check_resources(steps: Iterable[Step], machine: ResourcePool, *, where: str) -> None:
    """Refuse steps whose CPUs or memory ``machine`` can never give, naming each."""
    problems = [
        f"step '{step.name}' asks for {why}"
        for step in steps
        if (why := machine.beyond(step.resources.cpus, step.resources.memory)) is not None
    ]
    if problems:
        raise ChainError(
            "; ".join(problems),
            where=where,
            hint="Lower the step's resources to what the machine has (a step never runs with "
            "less than it asks for).",
        )


async def _image_of(
    step: Step, resolver: ImageResolver, emit: Callable[[Event], None] | None
) -> KlikoImage:
    if step.build is not None:
        check_build_folder(step.build)  # before "building image from" a folder that is not there
        if emit:
            emit(ImageBuilding(step=step.name, context=str(step.build)))
        image = await resolver.build(step.build)
        if emit:
            emit(ImageBuilt(step=step.name, context=str(step.build), image_id=image.id))
        return image
    assert step.image is not None  # the chain model guarantees one of image / build
    return await resolver.resolve(step.image)


def _file_hashes(params: ValidatedParameters) -> dict[str, str]:
    """Container path -> content hash of every file parameter (all hashed by now)."""
    hashes = {f.container_path: f.sha256 for f in params.files}
    unhashed = [path for path, digest in hashes.items() if digest is None]
    if unhashed:
        raise AssertionError(f"file parameters were not hashed: {unhashed}")
    return {path: digest for path, digest in hashes.items() if digest is not None}
