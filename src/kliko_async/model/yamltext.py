"""YAML text as people write it: a strict safe loader, error text with line and column, and
did-you-mean suggestions.

The chain file, matrix value files and kliko.yml share this one reader, so every YAML problem
reads the same wherever it comes from. Callers wrap :class:`YamlTextError` in their own
:class:`~kliko_async.errors.KlikoError` (which names the file).
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "YAML_SYNTAX_HINT",
    "YamlTextError",
    "did_you_mean",
    "join_problems",
    "parse_yaml_bytes",
    "parse_yaml_text",
    "yaml_kind",
]

YAML_SYNTAX_HINT = "Fix the YAML syntax there (indentation, colons, quotes)."
_DUPLICATE_HINT = "Remove or rename one of them (keys in one mapping are unique)."
_MAX_SHOWN = 20


class YamlTextError(Exception):
    """Text that is not the YAML it should be: ``message`` completes "<file> ...", ``hint`` says
    what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class _DuplicateKey(Exception):
    def __init__(self, key: Hashable, first: str, again: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.first = first
        self.again = again


class _StrictLoader(_BaseLoader):
    """A safe YAML loader that refuses a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_places: dict[Hashable, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=False)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            mark = key_node.start_mark
            place = f"line {mark.line + 1}, column {mark.column + 1}"
            if key in first_places:
                raise _DuplicateKey(key, first_places[key], place)
            first_places[key] = place
        return super().construct_mapping(node, deep=deep)


def parse_yaml_bytes(raw: bytes) -> Any:
    """The YAML document in ``raw`` (UTF-8, a byte-order mark allowed); as parse_yaml_text."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlTextError(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="Save the file as UTF-8 YAML.",
        ) from None
    return parse_yaml_text(text)


def parse_yaml_text(text: str) -> Any:
    """The YAML document in ``text``, read safely; a repeated key is an error, not a silent loss."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise YamlTextError(
            f"key {exc.key!r} appears twice in the same mapping, at {exc.first} and again at "
            f"{exc.again}; YAML would silently keep only the last one",
            hint=_DUPLICATE_HINT,
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise YamlTextError(_marked_error_text(exc), hint=YAML_SYNTAX_HINT) from None
    except yaml.YAMLError as exc:
        raise YamlTextError(f"is not valid YAML: {exc}", hint=YAML_SYNTAX_HINT) from None


def _marked_error_text(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = "; ".join(part for part in (exc.context, exc.problem) if part)
    return f"is not valid YAML{place}: {what or exc}"


def yaml_kind(value: object) -> str:
    """The YAML word for ``value``'s kind: null, boolean, number, string, mapping or list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the candidates close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=3)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def join_problems(problems: list[str]) -> str:
    """The first 20 problems joined with ``; `` and a count of the rest."""
    shown = problems[:_MAX_SHOWN]
    text = "; ".join(shown)
    if len(problems) > len(shown):
        text += f"; and {len(problems) - len(shown)} more problem(s)"
    return text
