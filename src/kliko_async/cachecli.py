"""The ``kliko-async cache`` command: ``ls``, ``verify`` (and ``--remove``), ``gc``."""

from __future__ import annotations

import argparse

from kliko_async.cache.store import Cache, default_cache_dir
from kliko_async.cache.upkeep import gc, remove_entries_with_problems, verify
from kliko_async.display.tables import print_entries
from kliko_async.display.terminal import printable
from kliko_async.errors import ParameterError
from kliko_async.model.quantities import parse_age, parse_size


def _verify(cache: Cache, *, remove: bool) -> int:
    """``cache verify``: every problem on a line; 1 while an entry with problems is left."""
    problems = verify(cache)
    for problem in problems:  # file names come from containers: no escapes, one line each
        print(printable(str(problem).replace("\n", "\\n")))
    if not problems:
        print(printable(f"0 problem(s) in {cache.root}"))
        return 0
    bad = len({problem.key for problem in problems})
    found = f"{len(problems)} problem(s) in {cache.root}, in {bad} {_entries(bad)}"
    if not remove:
        print(
            printable(
                f"{found}; runs take these entries as they are: 'kliko-async cache verify "
                "--remove' removes them, so that the next run computes them again"
            )
        )
        return 1
    removed, in_use = remove_entries_with_problems(cache, problems)
    said = f"{found}; removed {len(removed)}: the next run computes them again"
    if in_use:
        keys = ", ".join(key[:12] for key in in_use)
        said += (
            f"; left {len(in_use)} {_entries(len(in_use))} that a live run is using ({keys}): "
            "run 'kliko-async cache verify --remove' again once it has ended"
        )
    print(printable(said))
    return 1 if in_use else 0


def _entries(count: int) -> str:
    return "entry" if count == 1 else "entries"


def cache_command(options: argparse.Namespace) -> int:
    """``kliko-async cache ls|verify|gc``; the exit status."""
    cache = Cache(options.cache_dir or default_cache_dir())
    if options.cache_command == "ls":
        print_entries(list(cache.entries()), cache.root)
        return 0
    if options.cache_command == "verify":
        return _verify(cache, remove=options.remove)
    if options.older_than is None and options.max_size is None:
        raise ParameterError("cache gc needs --older-than AGE and/or --max-size SIZE")
    removed = gc(
        cache,
        older_than=parse_age(options.older_than) if options.older_than else None,
        max_size=parse_size(options.max_size) if options.max_size else None,
    )
    print(removed.summary())
    return 0
