"""A build folder's ``.dockerignore``, read and matched by Docker's own rules.

Docker's client reads the file line by line (moby's ``ignorefile.ReadAll``): a line starting
with ``#`` is a comment, blank lines are skipped, each pattern is trimmed and cleaned like a Go
path (``./a//b/`` is ``a/b``, a leading ``/`` is dropped) and ``!`` marks an exception. The
patterns are Go ``filepath.Match`` globs (``*`` and ``?`` never cross a ``/``, ``[a-z]``
classes, ``\\`` escapes the next character) plus ``**``, any number of folders (moby's
``patternmatcher``). The last pattern that matches a path decides, and a pattern that matches
a folder matches everything below it. Matching follows ``MatchesUsingParentResults``, the way
``docker build`` walks a context, so a folder's results are handed down to what it holds.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

IGNORE_FILE = ".dockerignore"

MatchInfo = tuple[bool, ...]
"""Which patterns matched a folder, handed to the paths below it (moby's ``MatchInfo``)."""


class IgnorePatternError(ValueError):
    """A pattern Docker refuses too (``!`` alone, an unclosed ``[``)."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"the pattern {pattern!r} is not valid: {reason}")


def clean_path(path: str) -> str:
    """``path`` as Go's ``filepath.Clean`` gives it on Linux (``""`` is ``"."``)."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")  # normpath keeps a leading '//', Go does not
    return cleaned


def read_ignore_lines(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file's text, as Docker's client reads them."""
    patterns: list[str] = []
    for number, raw in enumerate(text.splitlines()):
        line = raw.removeprefix("\ufeff") if number == 0 else raw
        if line.startswith("#"):
            continue  # a comment only when '#' is the very first character, as in Docker
        pattern = line.strip()
        if not pattern:
            continue
        exception = pattern.startswith("!")
        if exception:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if exception else pattern)
    return patterns


class _Kind(Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEXP = "regexp"


_ESCAPED = frozenset(".+()|{}$")
"""Characters special to a regular expression but plain in a Go glob."""


@dataclass(frozen=True)
class IgnorePattern:
    """One cleaned pattern; ``exception`` for a ``!`` line."""

    text: str
    exception: bool
    kind: _Kind
    regex: re.Pattern[str] | None

    @classmethod
    def parse(cls, line: str) -> IgnorePattern:
        """A pattern as moby's ``patternmatcher.New`` makes it; IgnorePatternError if bad."""
        pattern = clean_path(line.strip())
        exception = pattern.startswith("!")
        if exception:
            if len(pattern) == 1:
                raise IgnorePatternError(line, "'!' alone excepts nothing")
            pattern = pattern[1:]
        problem = _glob_problem(pattern)
        if problem:
            raise IgnorePatternError(line, problem)
        kind, source = _translate(pattern)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Python's "possible nested set" warnings
                regex = re.compile(source)
        except re.error as exc:
            raise IgnorePatternError(line, str(exc)) from None
        return cls(pattern, exception, kind, regex if kind is _Kind.REGEXP else None)

    def matches(self, path: str) -> bool:
        """Whether this pattern matches ``path`` itself (a clean, relative, '/'-separated path)."""
        if self.kind is _Kind.EXACT:
            return path == self.text
        if self.kind is _Kind.PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind is _Kind.SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _glob_problem(pattern: str) -> str | None:
    """What Go's ``filepath.Match`` finds wrong in ``pattern`` (Docker checks with it), or None."""
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            if position + 1 == len(pattern):
                return "it ends with a lone '\\'"
            position += 2
        elif char == "[":
            position += 1
            if pattern[position : position + 1] == "^":
                position += 1
            ranges = 0
            while pattern[position : position + 1] != "]" or not ranges:
                position = _class_char(pattern, position)
                if position and pattern[position : position + 1] == "-":
                    position = _class_char(pattern, position + 1)
                if not position:
                    return "a '[' class is not closed, is empty or has a stray '-' or ']'"
                ranges += 1
            position += 1
        else:
            position += 1
    return None


def _class_char(pattern: str, position: int) -> int:
    """Where a character of a ``[`` class starting at ``position`` ends; 0 if there is none."""
    char = pattern[position : position + 1]
    if char in ("", "-", "]"):
        return 0
    if char == "\\":
        return position + 2 if position + 1 < len(pattern) else 0
    return position + 1


def _translate(pattern: str) -> tuple[_Kind, str]:
    """The kind of ``pattern`` and the regular expression for it (moby's ``Pattern.compile``)."""
    parts = ["^"]
    kind = _Kind.EXACT
    position, step = 0, 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char == "*":
            if pattern[position : position + 1] == "*":
                position += 1
                if pattern[position : position + 1] == "/":
                    position += 1  # '**/' is '**'
                if position == len(pattern):
                    if kind is _Kind.EXACT:
                        kind = _Kind.PREFIX
                    else:
                        parts.append(".*")
                        kind = _Kind.REGEXP
                else:
                    parts.append("(.*/)?")  # any number of folders, even none
                    kind = _Kind.REGEXP
                if step == 0:
                    kind = _Kind.SUFFIX
            else:
                parts.append("[^/]*")
                kind = _Kind.REGEXP
        elif char == "?":
            parts.append("[^/]")
            kind = _Kind.REGEXP
        elif char in _ESCAPED:
            parts.append("\\" + char)
        elif char == "\\":
            if position < len(pattern):
                parts.append(re.escape(pattern[position]))
                position += 1
                kind = _Kind.REGEXP
            else:
                parts.append("\\\\")
        elif char in "[]":
            parts.append(char)
            kind = _Kind.REGEXP
        else:
            parts.append(char)
        step += 1
    return kind, "".join(parts) + r"\Z"


class IgnoreRules:
    """The patterns of one ``.dockerignore``, in order; later ones win."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.patterns: tuple[IgnorePattern, ...] = tuple(
            IgnorePattern.parse(line) for line in lines if line.strip()
        )
        self.has_exceptions = any(p.exception for p in self.patterns)

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        """The rules of a ``.dockerignore`` file's text."""
        return cls(read_ignore_lines(text))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def with_exceptions(self, paths: Sequence[str]) -> IgnoreRules:
        """These rules, with each of ``paths`` they would exclude excepted again at the end.

        ``docker build`` does this for the Dockerfile and ``.dockerignore``: the engine needs
        both, and leaves them out of the image itself when they are listed.
        """
        kept = [f"!{path}" for path in paths if self.excludes(path)]
        if not kept:
            return self
        rules = IgnoreRules(())
        rules.patterns = self.patterns + tuple(IgnorePattern.parse(line) for line in kept)
        rules.has_exceptions = True
        return rules

    def match(self, path: str, parent: MatchInfo | None = None) -> tuple[bool, MatchInfo]:
        """Whether ``path`` is excluded, and what its paths below inherit.

        ``parent`` is what :meth:`match` gave for the folder holding ``path``; without it,
        every folder above ``path`` is tried against each pattern instead.
        """
        excluded = False
        matched: list[bool] = []
        for index, pattern in enumerate(self.patterns):
            hit = parent[index] if parent else False
            if not hit:
                if pattern.exception != excluded:
                    matched.append(False)  # cannot change the outcome
                    continue
                hit = pattern.matches(path)
                if not hit and not parent:
                    folders = path.split("/")[:-1]
                    hit = any(
                        pattern.matches("/".join(folders[: depth + 1]))
                        for depth in range(len(folders))
                    )
            matched.append(hit)
            if hit:
                excluded = not pattern.exception
        return excluded, tuple(matched)

    def excludes(self, path: str) -> bool:
        """Whether ``path`` (relative, '/'-separated) is left out of the build context."""
        path = clean_path(path)
        return path != "." and self.match(path)[0]

    def may_include_below(self, folder: str) -> bool:
        """Whether an exception could bring back something inside an excluded ``folder``.

        Docker's test, kept as it is: an exception whose text starts with ``folder/``.
        ``!**/keep`` does not keep a walk into an excluded folder, in Docker as here.
        """
        prefix = folder + "/"
        return any(p.exception and (p.text + "/").startswith(prefix) for p in self.patterns)
