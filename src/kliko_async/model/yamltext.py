"""YAML text as people write it: a strict, bounded safe loader, error text with line and column,
and did-you-mean suggestions.

The chain file, matrix value files, run-image parameter files, the config file and kliko.yml
share this one reader, so every YAML problem reads the same wherever it comes from, and so that
no input, however hostile, costs more than its bounds: its size in bytes, how far aliases may
expand it, how deep it nests and how long an integer may be. Callers wrap
:class:`YamlTextError` in their own :class:`~kliko_async.errors.KlikoError` (which names the
file).

Numbers are read as a scientist writes them (the YAML 1.2 core schema's numbers): ``1e-3`` and
``2E5`` are floats; only plain decimal digits are integers; ``1:30``, ``0x10``, ``0o17``,
``007`` and dates such as ``2024-01-31`` stay the strings they look like, instead of becoming
90, 16, 15, 7 or a date behind the user's back. ``true``/``false`` (and YAML 1.1's yes/no,
on/off) are still booleans.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

import yaml

from kliko_async.collector import collector_paused

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_VALUES",
    "MAX_INTEGER_DIGITS",
    "MAX_YAML_BYTES",
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

MAX_YAML_BYTES = 64 << 20
"""The largest YAML text read by default (64 MiB: a 100,000-step chain file is about 10 MiB)."""
MAX_DEPTH = 100
"""How deeply collections may nest in one document."""
MAX_EXPANDED_VALUES = 100_000
"""Aliases (``*name``, ``<<: *name``) may expand a document to this many values, or to ten
times the values it spells out, whichever is more: enough for shared defaults, not for an alias
bomb (a few lines that expand to billions)."""
MAX_INTEGER_DIGITS = 100
"""The longest integer read; a longer one is refused (quote it to pass it as text)."""
_BOUNDS_HINT = "Write the values out instead of expanding aliases, or nest less."

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Implicit (untagged) numbers as in YAML 1.2's core schema, plus YAML 1.1's digit separator "_".
_DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_DECIMAL_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
          |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
          |[-+]?\.(?:inf|Inf|INF)
          |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_INTEGER_BOUND = 10**MAX_INTEGER_DIGITS
_VALUE_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError)
_NOT_IMPLICIT = {_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}


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


class _Refused(Exception):
    """A document past one of the loader's bounds, at ``mark``."""

    def __init__(self, problem: str, mark: yaml.Mark | None, hint: str = _BOUNDS_HINT) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark
        self.hint = hint


class _StrictLoader(_BaseLoader):
    """A safe YAML loader that refuses a key repeated in one mapping instead of keeping the last,
    and reads numbers as YAML 1.2 does (see the module's docstring)."""

    yaml_implicit_resolvers = {  # noqa: RUF012 - read-only, as in the base class
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NOT_IMPLICIT]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _VALUE_ERRORS:  # an explicit tag on a value it does not fit: !!int abc
            tag = node.tag.rpartition(":")[2]
            raise _Refused(
                f"{str(node.value)[:40]!r} is not a valid {tag}"
                if isinstance(node, yaml.ScalarNode)
                else f"this {tag} cannot be read",
                node.start_mark,
                "Remove the tag (such as !!int) or correct the value.",
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INTEGER_DIGITS:
            raise _Refused(*_long_integer(f"of {digits} digits", node.start_mark))
        value: int = super().construct_yaml_int(node)
        if abs(value) >= _INTEGER_BOUND:  # an explicit !!int in another base
            raise _Refused(*_long_integer("this large", node.start_mark))
        return value

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


_StrictLoader.add_implicit_resolver(_INT_TAG, _DECIMAL_INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver(_FLOAT_TAG, _DECIMAL_FLOAT, list("-+.0123456789"))
_StrictLoader.add_constructor(_INT_TAG, _StrictLoader.construct_yaml_int)


def _long_integer(size: str, mark: yaml.Mark) -> tuple[str, yaml.Mark, str]:
    return (
        f"an integer {size} is longer than the {MAX_INTEGER_DIGITS} digits allowed",
        mark,
        "Quote it if it is text, such as an identifier.",
    )


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _check_node_bounds(root: yaml.Node) -> None:
    """Refuse a composed document that nests deeper than :data:`MAX_DEPTH`, refers to itself,
    or that aliases expand past :data:`MAX_EXPANDED_VALUES` (counted on the node graph, without
    expanding anything, in time linear in its size)."""
    expanded: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, _children(root))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if id(child) in expanded:
                continue
            if id(child) in on_path:
                raise _Refused("an alias refers to a collection that holds it", child.start_mark)
            if len(stack) >= MAX_DEPTH:
                raise _Refused(
                    f"collections nest more than {MAX_DEPTH} levels deep", child.start_mark
                )
            on_path.add(id(child))
            stack.append((child, _children(child)))
            break
        else:
            stack.pop()
            on_path.discard(id(node))
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in _children(node))
    limit = max(MAX_EXPANDED_VALUES, 10 * len(expanded))
    if expanded[id(root)] > limit:
        raise _Refused(
            f"aliases expand the document to {expanded[id(root)]:,} values, more than the "
            f"{limit:,} allowed",
            root.start_mark,
        )


def parse_yaml_bytes(raw: bytes, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The YAML document in ``raw`` (UTF-8, a byte-order mark allowed); as parse_yaml_text.

    Text longer than ``max_bytes`` is refused before it is parsed.
    """
    if len(raw) > max_bytes:
        raise YamlTextError(
            f"is {len(raw):,} bytes long, more than the {max_bytes:,} bytes allowed",
            hint="Give a smaller file.",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlTextError(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="Save the file as UTF-8 YAML.",
        ) from None
    return parse_yaml_text(text)


def parse_yaml_text(text: str) -> Any:
    """The YAML document in ``text``, read safely; a repeated key is an error, not a silent loss,
    and a document past the bounds (depth, alias expansion, integer length) is refused."""
    try:
        return _load(text)
    except _Refused as exc:
        mark = exc.mark
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise YamlTextError(f"cannot be read{place}: {exc.problem}", hint=exc.hint) from None
    except RecursionError:
        raise YamlTextError(
            f"cannot be read: collections nest more than {MAX_DEPTH} levels deep",
            hint=_BOUNDS_HINT,
        ) from None
    except _DuplicateKey as exc:
        raise YamlTextError(
            f"key {exc.key!r} appears twice in the same mapping, at {exc.first} and again at "
            f"{exc.again}; YAML would silently keep only the last one",
            hint=_DUPLICATE_HINT,
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise YamlTextError(_marked_error_text(exc), hint=YAML_SYNTAX_HINT) from None
    except yaml.reader.ReaderError as exc:
        what = f"character U+{exc.character:04X}" if isinstance(exc.character, int) else "byte"
        raise YamlTextError(
            f"is not valid YAML: {what} at offset {exc.position} is not allowed ({exc.reason})",
            hint="Remove the control characters; write them as escapes in double quotes.",
        ) from None
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).split())  # one line
        raise YamlTextError(f"is not valid YAML: {text}", hint=YAML_SYNTAX_HINT) from None


def _load(text: str) -> Any:
    loader = _StrictLoader(text)  # a SafeLoader subclass
    # Composing a big document makes millions of nodes and no cyclic garbage: the collector,
    # going over all of them again and again, took most of the time and held up Ctrl-C.
    with collector_paused():
        return _load_with(loader)


def _load_with(loader: _StrictLoader) -> Any:
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_bounds(node)
        try:
            return loader.construct_document(node)
        except _VALUE_ERRORS as exc:
            text = " ".join(str(exc)[:100].split())
            raise _Refused(f"a value cannot be read ({text})", node.start_mark) from None
    finally:
        loader.dispose()


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
