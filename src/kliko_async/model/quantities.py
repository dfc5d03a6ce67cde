"""Sizes and ages as people write them: ``512m``, ``1.5GiB``, ``10MB``, ``30d``, ``1d12h``."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from kliko_async.errors import CacheError

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?b)?|(b))?\s*", re.IGNORECASE)
SIZE_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)\s*(([kmgtpKMGTP]([iI]?[bB])?)|[bB])?\s*$"
"""The same grammar as a JSON Schema pattern, for editors."""


def size_in_bytes(text: str, *, decimal_kb: bool) -> int | None:
    """Bytes from ``123``, ``100k``, ``512m``, ``2G``, ``1.5GiB``, ``10MB``; None if not a size.

    A bare unit letter (any case) and ``KiB``-style units are powers of 1024. ``KB``-style units
    are powers of 1000 with ``decimal_kb`` (as GNU coreutils reads them) and of 1024 without (as
    Docker reads memory limits). Fractions round down.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        return None
    number, letter, suffix, _ = match.groups()
    if not letter:
        return int(Decimal(number))
    power = "kmgtp".index(letter.lower()) + 1
    base = 1000 if decimal_kb and (suffix or "").lower() == "b" else 1024
    return int(Decimal(number) * base**power)


def parse_size(text: str) -> int:
    """Bytes from a size given on the command line (``cache gc --max-size``), coreutils style."""
    size = size_in_bytes(text, decimal_kb=True)
    if size is None:
        raise CacheError(
            f"'{text}' is not a size",
            hint="Write a number with an optional unit, such as 500M, 2G, 1.5GiB or 100k.",
        )
    return size


def describe_size(size: int) -> str:
    """``size`` bytes as people read it: ``1.5 GiB``, ``512 MiB``, ``100 bytes``."""
    for unit, scale in (
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ):
        if size >= scale:
            return f"{round(size / scale, 2):g} {unit}"
    return f"{size} bytes"


_AGE_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)")
_AGE_UNITS: dict[str, timedelta] = {
    name: span
    for names, span in (
        (("s", "sec", "secs", "second", "seconds"), timedelta(seconds=1)),
        (("m", "min", "mins", "minute", "minutes"), timedelta(minutes=1)),
        (("h", "hr", "hrs", "hour", "hours"), timedelta(hours=1)),
        (("d", "day", "days"), timedelta(days=1)),
        (("w", "week", "weeks"), timedelta(weeks=1)),
    )
    for name in names
}


def parse_age(text: str) -> timedelta:
    """A span from ``45s``, ``90m``, ``12h``, ``30d``, ``2w`` or a sum such as ``1d12h``.

    A unit is required (a bare number is ambiguous); ``m`` is minutes, never months.
    """
    bad = CacheError(
        f"'{text}' is not an age",
        hint="Write a number with a unit s, m, h, d or w, such as 30d, 12h or 1d12h.",
    )
    rest = text.strip()
    if not rest:
        raise bad
    total = timedelta()
    position = 0
    while position < len(rest):
        match = _AGE_PART_RE.match(rest, position)
        if match is None or match.group(2).lower() not in _AGE_UNITS:
            raise bad
        total += float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]
        position = match.end()
        while position < len(rest) and rest[position].isspace():
            position += 1
    return total
