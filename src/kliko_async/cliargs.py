"""The ``kliko-async`` command line's arguments: every subcommand and option, with its help;
parsing them, and the options a profile of the config file fills in."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kliko_async import __version__
from kliko_async.errors import ParameterError, os_error_text

if TYPE_CHECKING:
    from kliko_async.model.profiles import Profile


def parse_command_line(args: list[str]) -> argparse.Namespace:
    """The command line, with options and step names in any order (``run chain.yaml -j 2
    merge``): argparse takes positionals mixed with options only per subcommand."""
    parser, commands = build_parsers()
    options, extra = parser.parse_known_args(args)
    if not extra:
        return options
    if options.command == "cache":
        return parser.parse_args(args)  # its actions take no positionals: the usual error
    command = commands[options.command]
    after = args[args.index(options.command) + 1 :]  # only -h/--version come before it
    mixed = command.parse_intermixed_args(after)
    mixed.command = options.command
    return mixed


def profile_named(name: str | None) -> Profile:
    from kliko_async.model.profiles import load_profile

    return load_profile(name)


def apply_profile(options: argparse.Namespace) -> None:
    """Fill the options not given on the command line from the chosen profile."""
    profile = profile_named(options.profile)
    options.backend = options.backend or profile.backend or "docker"
    options.partition = options.partition or profile.partition
    options.slurm_opt = [*profile.slurm_opts, *options.slurm_opt]
    options.engine = profile.engine or "auto"
    options.cache_dir = options.cache_dir or profile.cache_dir
    options.jobs = options.jobs or profile.jobs
    given_max_jobs = options.slurm_max_jobs
    options.slurm_max_jobs = options.slurm_max_jobs or profile.slurm_max_jobs
    if options.backend != "slurm" and (options.partition or options.slurm_opt or given_max_jobs):
        raise ParameterError("--partition, --slurm-opt and --slurm-max-jobs need --backend slurm")


def build_parser() -> argparse.ArgumentParser:
    return build_parsers()[0]


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and each subcommand's by name (``run``, ``why``, ...)."""
    parser = argparse.ArgumentParser(
        prog="kliko-async",
        description="Run chains of Kliko containers as a concurrent DAG with a content-addressed "
        "cache.",
    )
    parser.add_argument("--version", action="version", version=f"kliko-async {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a chain file", description="Run a chain file.")
    run.add_argument("chain", type=Path, help="the chain file (YAML)")
    targets_argument(run, "run only these steps and what they need")
    set_option(run)
    run.add_argument("-j", "--jobs", type=positive_int, help="steps at once (default: CPUs)")
    run.add_argument(
        "--keep-going", action="store_true", help="after a failure, run what does not depend on it"
    )
    cache_dir_option(
        run, profile="a profile of run options from the config file (see docs/cluster.md)"
    )
    run.add_argument(
        "--out", type=Path, default=Path("kliko-out"), help="copy outputs to OUT/<step>/"
    )
    run.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="re-run STEP (and what depends on it) even if cached; repeatable",
    )
    run.add_argument("--no-cache", action="store_true", help="re-run every step")
    run.add_argument(
        "--backend",
        choices=("docker", "slurm"),
        help="where steps run: the local Docker Engine (default) or Slurm jobs on a cluster",
    )
    run.add_argument("--partition", help="Slurm partition for the steps' jobs")
    run.add_argument(
        "--slurm-opt",
        action="append",
        default=[],
        metavar="OPTION",
        help="an extra sbatch option for every job (e.g. --slurm-opt=--account=radio); repeatable",
    )
    run.add_argument(
        "--slurm-max-jobs",
        type=positive_int,
        metavar="N",
        help="at most N of the run's Slurm jobs pending or running at once (default 100)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the plan (keys, cache hits) and stop"
    )
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--plain", action="store_true", help="one line per event, no live view")
    shown.add_argument("--json", action="store_true", help="one JSON event per line")
    shown.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    run.add_argument(
        "--explain",
        action="store_true",
        help="first say why each step would run or where its cached result comes from",
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="after the run, write its report (an HTML page) to FILE; see 'kliko-async report'",
    )
    run.add_argument(
        "--logs",
        choices=("all", "failed", "none"),
        default="all",
        help="which container log lines are shown: all (default), only a failed step's last "
        "lines, or none; every line is saved in the step's log whatever is shown",
    )

    report = commands.add_parser(
        "report",
        help="write a run's report: one HTML page with its graph, timeline and steps",
        description="Write the report of a run (default: the latest one in the cache folder) "
        "as one self-contained HTML page: the chain coloured by state, a timeline of every "
        "step, and each step's image, key, parameters, exit code and log.",
    )
    report.add_argument("run_id", nargs="?", help="the run's ID, or the start of it")
    report.add_argument(
        "-o", "--output", type=Path, default=Path("report.html"), help="default: report.html"
    )
    cache_dir_option(report)

    provenance = commands.add_parser(
        "provenance",
        help="print a chain file that makes a product again",
        description="Print the chain file that makes a product again, read off the cache: "
        "TARGET is a folder that 'run --out' wrote, a cache entry folder, or a cache key (or "
        "its start). Its images are named by ID and its parameters are complete.",
    )
    provenance.add_argument("target", help="an exported step folder, or a cache key")
    cache_dir_option(provenance)

    image = commands.add_parser(
        "run-image",
        help="run one Kliko image (like kliko-run)",
        description="Run one Kliko image. Its parameters become flags: "
        "kliko-async run-image IMAGE --help lists them.",
        add_help=False,
    )
    image.add_argument("image", help="image tag or ID")
    image.add_argument("-h", "--help", action="store_true", help="show this help (and the image's)")

    validate = commands.add_parser(
        "validate",
        help="check a kliko.yml file or an image's kliko.yml",
        description="Check a kliko.yml (a file, or an image's /kliko.yml) and list its parameters.",
    )
    validate.add_argument("target", help="a kliko.yml path or an image tag/ID")
    cache_dir_option(validate)

    logs = commands.add_parser(
        "logs",
        help="print a step's saved log",
        description="Print the full saved log (stdout and stderr) of a step of a chain: the "
        "cached entry's log, or the latest failed attempt's log.",
    )
    logs.add_argument("chain", nargs="?", type=Path, help="the chain file")
    logs.add_argument("step", nargs="?", help="the step name")
    logs.add_argument("--key", help="a cache key (or its first characters) instead")
    set_option(logs)
    logs.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="show each line's time stamp (the engine's) and stream",
    )
    cache_dir_option(logs)

    why = commands.add_parser(
        "why",
        help="say why steps would run, or which cache entry they come from",
        description="For each STEP that would run: the cache entry it would have matched and "
        "every ingredient that differs (chasing changed inputs upstream), or 'never ran'. For a "
        "cached STEP: its entry, when and by which run it was made, how long it took. Without "
        "STEP: every step. A matrix step's name means all of its expansions.",
    )
    why.add_argument("chain", type=Path, help="the chain file")
    why.add_argument("steps", nargs="*", metavar="STEP", help="step names (default: all)")
    why.add_argument("--json", action="store_true", help="one JSON explanation per line")
    set_option(why)
    cache_dir_option(why)

    graph = commands.add_parser(
        "graph",
        help="draw a chain's DAG",
        description="Draw a chain's steps and edges, and whether each is cached: in the "
        "terminal, or as Graphviz (--format dot; --format svg needs Graphviz's dot).",
    )
    graph.add_argument("chain", type=Path, help="the chain file")
    targets_argument(graph, "draw only these steps and what they need")
    set_option(graph)
    graph.add_argument("--format", choices=("text", "dot", "svg"), default="text")
    graph.add_argument("-o", "--output", type=Path, help="write to this file (default: stdout)")
    cache_dir_option(graph)

    commands.add_parser(
        "schema", help="print the chain file's JSON Schema", description="Print the JSON Schema."
    )

    cache = commands.add_parser("cache", help="inspect and clean the cache", description="Cache.")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    ls_text = "list entries"
    cache_dir_option(cache_commands.add_parser("ls", help=ls_text, description=ls_text))
    verify_text = "re-hash outputs against manifests"
    verify = cache_commands.add_parser("verify", help=verify_text, description=verify_text)
    verify.add_argument(
        "--remove",
        action="store_true",
        help="remove the entries with problems (runs take an entry as it is, without re-hashing "
        "it), so that the next run computes them again; not one a live run is using",
    )
    cache_dir_option(verify)
    gc = cache_commands.add_parser("gc", help="remove old entries", description="Remove entries.")
    gc.add_argument("--older-than", help="e.g. 30d, 12h")
    gc.add_argument("--max-size", help="e.g. 10G: remove oldest entries until under it")
    cache_dir_option(gc)
    return parser, dict(commands.choices)


def cache_dir_option(
    parser: argparse.ArgumentParser,
    *,
    profile: str = "take the cache folder from this profile of the config file (default: its "
    "default profile, as 'run' does)",
) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="cache folder (default: the profile's, else $XDG_CACHE_HOME/kliko-async)",
    )
    parser.add_argument("--profile", help=profile)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def targets_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="STEP",
        help=f"{what} (default: every step; a matrix step's name means all of its expansions)",
    )


def set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="sets",
        help="give the chain's variable NAME (under vars:) this value, typed by the parameter "
        "it lands in; repeatable",
    )


def check_cache_dir(cache_dir: Path | None, *, default_too: bool) -> None:
    """Refuse the cache folder given to a command (or else, ``default_too``, the default one),
    if it cannot be read as one: a file (/dev/null), read as a cache, would look empty ("0
    entries") and `cache gc` would fail on it; a folder you may not read or look into (another
    user's) ended in a traceback. (``validate`` and ``graph`` do without a default cache they
    cannot read.)"""
    if cache_dir is None:
        if not default_too:
            return
        from kliko_async.cache.store import default_cache_dir

        where = f"cache folder {default_cache_dir()}"
        cache_dir = default_cache_dir()
        hint = "Give --cache-dir, or set XDG_CACHE_HOME to a folder of yours."
    else:
        where = f"--cache-dir {cache_dir}"
        hint = "Give the cache folder of the runs (the profile's, or the default one)."
    try:
        exists, is_folder = cache_dir.exists(), cache_dir.is_dir()
    except OSError as error:
        raise ParameterError(
            f"cannot look at it: {os_error_text(error)}", where=where, hint=hint
        ) from None
    if exists and not is_folder:
        raise ParameterError("is not a folder, so it holds no cache", where=where, hint=hint)
    if is_folder and not os.access(cache_dir, os.R_OK | os.X_OK):
        raise ParameterError(
            "cannot be read (permission denied)",
            where=where,
            hint="Give a cache folder you may read (its owner may share it with a group).",
        )
