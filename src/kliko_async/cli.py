"""The ``kliko-async`` command: argument parsing, exit codes, and which display to use.

Errors meant for people (:class:`~kliko_async.errors.KlikoError`) are printed as one paragraph
with a non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from kliko_async.cliargs import (
    apply_profile,
    build_parser,
    check_cache_dir,
    parse_command_line,
    profile_named,
)
from kliko_async.collector import fewer_collections
from kliko_async.errors import KlikoError, ParameterError

if TYPE_CHECKING:
    from kliko_async.events import EventConsumer
    from kliko_async.model.chain import Chain

CLOSED_OUTPUT_EXIT = 141
"""The exit status when stdout closed under a run (``| head``): a shell's 128 + SIGPIPE."""


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with fewer_collections():  # the process's own: for big chains (kliko_async.collector)
            code = _dispatch(args)
    except KlikoError as error:
        print(f"kliko-async: error: {_printable(str(error))}", file=sys.stderr)
        code = error.exit_status
    except KeyboardInterrupt:
        print("kliko-async: interrupted", file=sys.stderr)
        # Whatever had to be cleaned up was, before this (containers, staging folders: shielded
        # in the run). What is left is memory: freeing the objects of a half-read 100,000-step
        # chain one by one took the interpreter seconds after Ctrl-C. Leave at once instead.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to keep
                stream.flush()
        os._exit(130)
    except BrokenPipeError:  # `| head` read enough of a listing (dry run, why, graph, logs)
        _silence_stdout()
        raise SystemExit(CLOSED_OUTPUT_EXIT) from None
    except BaseExceptionGroup as group:  # a task group wrapped an error meant for people
        matched, _ = group.split(KlikoError)
        if matched is None:
            raise
        first = _first_leaf(matched)
        print(f"kliko-async: error: {_printable(str(first))}", file=sys.stderr)
        code = first.exit_status if isinstance(first, KlikoError) else 1
    sys.stdout.flush()
    raise SystemExit(code)


def _printable(text: str) -> str:
    """``text`` without escape sequences or control characters: error messages and explanations
    quote kliko.yml files, images and containers, which are someone else's text."""
    from kliko_async.display.terminal import printable

    return printable(text)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _dispatch(args: list[str]) -> int:
    if args and args[0] == "run-image":
        return _run_image(args[1:])
    options = parse_command_line(args)
    if options.command != "run" and hasattr(options, "cache_dir"):
        # The same cache as `run` with these options: the profile's (see _apply_profile).
        options.cache_dir = options.cache_dir or profile_named(options.profile).cache_dir
        reads_it = options.command in ("logs", "why", "cache", "report", "provenance")
        check_cache_dir(options.cache_dir, default_too=reads_it)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "validate": _validate,
        "schema": _schema,
        "logs": _logs,
        "why": _why,
        "graph": _graph,
        "cache": _cache,
        "report": _report,
        "provenance": _provenance,
    }
    return handlers[options.command](options)


# -- run ---------------------------------------------------------------------------------------


def _run(options: argparse.Namespace) -> int:
    import anyio

    from kliko_async.api import dry_run, run_blocking

    apply_profile(options)  # first: the explanation reads the profile's cache too
    if options.report is not None and not options.dry_run:
        from kliko_async.display.report import check_report_target

        check_report_target(options.report)  # not after an hour of running
    chain = _chain(options)
    explain = functools.partial(
        _print_explanations,
        chain,
        [],
        cache_dir=options.cache_dir,
        as_json=options.json,
        force=options.force,
        no_cache=options.no_cache,
    )
    if options.explain and not options.dry_run:
        explain()
    if options.dry_run:
        plan = run_blocking(
            lambda: dry_run(
                chain,
                cache_dir=options.cache_dir,
                force=options.force,
                no_cache=options.no_cache,
            )
        )
        from kliko_async.display.dryrun import print_plan

        print_plan(plan, sys.stdout)
        if options.explain:
            explain(build=False)  # a dry run builds nothing, not even to explain
        return 0
    display = _pick_display(options)  # the run closes it after its last event
    return anyio.run(_run_until_signal, options, chain, display)


def _chain(options: argparse.Namespace) -> Chain:
    """The chain loaded with the ``--set`` values of its variables and cut down to the target
    steps and what they need; before any event loop runs."""
    sets, targets = options.sets, getattr(options, "targets", [])
    from kliko_async.engine.signals import while_main_waits
    from kliko_async.model.chain import load_chain
    from kliko_async.model.variables import VariableError, parse_sets

    try:
        given = parse_sets(sets)
    except VariableError as error:
        raise ParameterError(str(error), hint="Write --set NAME=VALUE once per variable.") from None
    chain = while_main_waits(functools.partial(load_chain, options.chain, sets=given))
    force = getattr(options, "force", None) or ()
    return chain.needed_for(targets, force=force) if targets else chain


def _slurm_options(options: argparse.Namespace) -> Any:
    if options.backend != "slurm":
        return None
    from kliko_async.runtime.slurm.options import SlurmOptions

    return SlurmOptions(
        partition=options.partition,
        sbatch_options=tuple(options.slurm_opt),
        engine=options.engine,
        **({"max_jobs": options.slurm_max_jobs} if options.slurm_max_jobs else {}),
    )


def _pick_display(options: argparse.Namespace) -> EventConsumer:
    if options.json:
        from kliko_async.display.jsonl import JsonLinesDisplay

        return JsonLinesDisplay(sys.stdout)
    if options.plain or options.quiet or not sys.stdout.isatty():
        from kliko_async.display.plain import PlainDisplay

        return PlainDisplay(sys.stdout, quiet=options.quiet, logs=options.logs)
    from kliko_async.display.live import LiveDisplay

    return LiveDisplay(logs=options.logs)


async def _run_until_signal(
    options: argparse.Namespace, chain: Path | Chain, display: EventConsumer
) -> int:
    import anyio

    from kliko_async.api import open_run
    from kliko_async.engine.signals import until_signal

    closed: list[BaseException] = []

    async def work() -> int:
        with anyio.CancelScope() as scope:

            def on_display_error(error: BaseException) -> None:
                if _is_closed_pipe(error):  # `| head` has read enough: stop, as SIGPIPE would
                    closed.append(error)
                    _silence_stdout()
                    scope.cancel()
                else:
                    print(
                        f"kliko-async: the display failed ({error!r}); the run goes on",
                        file=sys.stderr,
                    )

            async with open_run(
                chain,
                cache_dir=options.cache_dir,
                jobs=options.jobs,
                keep_going=options.keep_going,
                force=options.force,
                no_cache=options.no_cache,
                out=options.out,
                on_event=display,
                on_event_error=on_display_error,
                backend=options.backend,
                slurm=_slurm_options(options),
            ) as handle:
                pass
        if options.report is not None:
            from kliko_async.cache.store import Cache, default_cache_dir
            from kliko_async.display.report import write_report

            cache = Cache(options.cache_dir or default_cache_dir())
            written = write_report(cache, handle.result.run_id, options.report)
            print(f"kliko-async: the run's report is in {written}", file=sys.stderr)
        if closed:
            print(
                "kliko-async: stopped: the output was closed; running containers were removed "
                "and finished steps stay cached",
                file=sys.stderr,
            )
            return CLOSED_OUTPUT_EXIT
        dropped = handle.feed.dropped_log_lines if handle.feed is not None else 0
        if dropped and options.logs != "none":  # with none, no line was to be shown anyway
            print(
                f"kliko-async: {dropped} log line(s) were not shown, as the display fell behind; "
                "every line is in the saved logs (kliko-async logs CHAIN STEP)",
                file=sys.stderr,
            )
        return 0 if handle.result.ok else 1

    what = (
        "cancelling the run's Slurm jobs"
        if options.backend == "slurm"
        else "removing running containers"
    )
    return await until_signal(work, what=f"{what}; finished steps stay cached")


def _is_closed_pipe(error: BaseException) -> bool:
    return isinstance(error, BrokenPipeError) or (
        isinstance(error, OSError) and error.errno == errno.EPIPE
    )


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that no later flush fails on the closed pipe (the
    interpreter's own flush at exit would print a traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# -- run-image ---------------------------------------------------------------------------------


def _run_image(args: list[str]) -> int:
    import anyio

    first = argparse.ArgumentParser(prog="kliko-async run-image", add_help=False)
    first.add_argument("image", nargs="?")
    first.add_argument("-h", "--help", action="store_true")
    first.add_argument("--cache-dir", type=Path)
    known, _ = first.parse_known_args(args)
    if known.image is None:
        build_parser().parse_args(["run-image", "--help"]) if known.help else None
        raise KlikoError("run-image needs an image: kliko-async run-image IMAGE [--PARAM VALUE]")
    # A --params file is the user's own input: read and checked before the engine is asked
    # for the image, so that its mistakes are said first, with or without an engine.
    given = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    given.add_argument("--params", type=Path)
    params_file = given.parse_known_args(args)[0].params
    from_file = None
    if params_file is not None:
        from kliko_async.engine.runimage import read_params_file

        from_file = read_params_file(params_file)
    return anyio.run(_run_image_async, known.image, known.cache_dir, args, from_file)


async def _run_image_async(
    ref: str, cache_dir: Path | None, args: list[str], from_file: dict[str, Any] | None
) -> int:
    from kliko_async.api import open_runtime, read_image
    from kliko_async.engine.runimage import image_parser, run_single_image
    from kliko_async.engine.signals import until_signal

    async with open_runtime(None) as runtime:
        image = await read_image(ref, cache_dir=cache_dir, runtime=runtime)
        options = image_parser(image, _printable).parse_args(args)
        return await until_signal(
            lambda: run_single_image(runtime, image, options, from_file),
            what="removing the container",
        )


# -- validate, schema, cache -------------------------------------------------------------------


def _validate(options: argparse.Namespace) -> int:
    import anyio

    from kliko_async.display.tables import print_spec
    from kliko_async.model.spec import load_spec

    target = Path(options.target)
    if target.exists() or _looks_like_a_path(options.target):
        spec = load_spec(target / "kliko.yml" if target.is_dir() else target)
        print_spec(spec, str(target))
        return 0

    async def from_image() -> int:
        from kliko_async.api import read_image

        image = await read_image(options.target, cache_dir=options.cache_dir)
        print_spec(image.spec, f"image {options.target} ({image.id[:19]})")
        return 0

    return anyio.run(from_image)


def _looks_like_a_path(text: str) -> bool:
    """A missing ``./x``, ``/x`` or ``x.yml`` is a file to report missing, not an image tag."""
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".yml", ".yaml"))


def _logs(options: argparse.Namespace) -> int:
    from kliko_async.api import dry_run, run_blocking
    from kliko_async.cache.logfiles import log_by_key, log_records
    from kliko_async.cache.store import Cache, default_cache_dir
    from kliko_async.engine.logsearch import find_step_log

    cache = Cache(options.cache_dir or default_cache_dir())
    if options.key:
        path = log_by_key(cache, options.key)
    elif options.chain is not None and options.step is not None:
        chain = _chain(options)
        plan = run_blocking(lambda: dry_run(chain, cache_dir=cache.root))
        path = find_step_log(cache, plan, options.step)
    else:
        raise ParameterError("logs needs CHAIN STEP, or --key KEY")
    out = sys.stdout.buffer
    for at, stream, text in log_records(path):
        if options.timestamps:
            out.write(at + b" " + stream.encode() + b" ")
        out.write(text + b"\n")
    return 0


def _why(options: argparse.Namespace) -> int:
    _print_explanations(
        _chain(options), options.steps, cache_dir=options.cache_dir, as_json=options.json
    )
    return 0


def _print_explanations(
    chain: Path | Chain,
    steps: list[str],
    *,
    cache_dir: Path | None,
    as_json: bool,
    force: Sequence[str] = (),
    no_cache: bool = False,
    build: bool = True,
) -> None:
    from kliko_async.api import explain, run_blocking

    explanations = run_blocking(
        lambda: explain(
            chain, steps, cache_dir=cache_dir, force=force, no_cache=no_cache, build=build
        )
    )
    for explanation in explanations:
        if as_json:
            sys.stdout.write(explanation.model_dump_json() + "\n")
        else:
            sys.stdout.write("".join(f"{_printable(line)}\n" for line in explanation.lines()))
    sys.stdout.flush()


def _graph(options: argparse.Namespace) -> int:
    from kliko_async.api import dry_run, run_blocking
    from kliko_async.display import graph

    chain = _chain(options)
    plan = run_blocking(lambda: dry_run(chain, cache_dir=options.cache_dir))
    if options.format == "text":
        import io

        from rich.console import Console

        if options.output is None:
            graph.print_graph(plan, Console(soft_wrap=True))
            return 0
        text = io.StringIO()  # written below as the other formats: one way to fail, said once
        graph.print_graph(plan, Console(file=text, no_color=True, soft_wrap=True))
        data = text.getvalue().encode()
    else:
        data = graph.to_svg(plan) if options.format == "svg" else graph.to_dot(plan).encode()
    if options.output is None:
        sys.stdout.buffer.write(data)
    else:
        try:
            options.output.write_bytes(data)
        except OSError as error:
            raise ParameterError(
                f"could not write the graph: {error.strerror or error}",
                where=f"-o {options.output}",
                hint="Give a file in a folder you can write.",
            ) from None
    return 0


def _schema(options: argparse.Namespace) -> int:
    from kliko_async.model.chain import chain_json_schema

    print(json.dumps(chain_json_schema(), indent=2))
    return 0


def _report(options: argparse.Namespace) -> int:
    from kliko_async.cache.store import Cache, default_cache_dir
    from kliko_async.display.report import check_report_target, write_report

    check_report_target(options.output, "-o")
    cache = Cache(options.cache_dir or default_cache_dir())
    print(write_report(cache, options.run_id, options.output))
    return 0


def _provenance(options: argparse.Namespace) -> int:
    from kliko_async.cache.provenance import key_of, provenance_chain
    from kliko_async.cache.store import Cache, default_cache_dir

    cache = Cache(options.cache_dir or default_cache_dir())
    sys.stdout.write(provenance_chain(cache, key_of(options.target, cache)))
    return 0


def _cache(options: argparse.Namespace) -> int:
    from kliko_async.cachecli import cache_command

    return cache_command(options)
