"""Fuzzing the chain loader and the kliko.yml loader: whatever the text, the result is a chain,
a spec or one of the project's errors in one line; never a traceback, never unbounded memory.

The texts are built from the pieces hostile YAML is made of (anchors, aliases, merge keys,
tags, deep brackets, long numbers, escape sequences) and from random documents of the right
shape, so that the checks past the YAML syntax are reached too.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kliko_async.errors import KlikoError
from kliko_async.model.chain import load_chain
from kliko_async.model.parameters import validate_parameters
from kliko_async.model.spec import parse_spec

MEMORY_BOUND = 64 << 20
"""What one load may allocate at its peak (the inputs here are at most a few kilobytes)."""

FRAGMENTS = [
    "steps:", "sections:", "fields:", "schema_version: 3", "io: split", "io: join", "name: ",
    "type: int", "type: float", "type: List[int]", "type: choice", "choices: {a: b}",
    "initial: ", "required: true", "max_length: 3", "image: x", "params: ", "inputs: [a]",
    "matrix: ", "from-file: /dev/zero", "name: '{n:>99999}'", "&a ", "*a", "<<: *a", "!!int ",
    "!!float ", "!!binary ", "!!set ", "!!python/object ", "? ", "- ", "[", "]", "{", "}",
    ", ", ": ", "\n", "  ", "\t", "'", '"', "#", "1e-3", "1:30", "0x10", "9" * 120, "-.inf",
    ".nan", "~", "null", "yes", "2024-01-31", "\x1b]0;t\x07", "\x1b[2J", "\x00", "\ufeff", "=",
    "a", "b", "n", "[" * 150, "a: &b [*b]",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**120), max_value=10**120),
    st.floats(),
    st.text(max_size=20),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "steps",
                    "sections",
                    "fields",
                    "name",
                    "type",
                    "image",
                    "params",
                    "inputs",
                    "matrix",
                    "initial",
                    "io",
                    "schema_version",
                    "choices",
                    "a",
                    "b",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=20,
)
texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    st.text(max_size=300),
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)

SPEC = parse_spec(
    "schema_version: 3\nio: split\nsections:\n- name: s\n  fields:\n"
    "  - {name: n, type: int}\n  - {name: x, type: float}\n  - {name: t, type: str}\n"
    "  - {name: l, type: 'List[float]'}\n  - {name: c, type: choice, choices: {a: A}}\n",
    "kliko.yml",
)


def bounded(load: Any) -> Any:
    """Run ``load``; only the project's errors may come out, in one short line, and its peak
    allocation stays under MEMORY_BOUND."""
    tracemalloc.start()
    try:
        return load()
    except KlikoError as error:
        text = str(error)
        assert "\n" not in text, text
        assert len(text) <= 10_000
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"{peak:,} bytes"


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(text=texts)
def test_the_kliko_yml_loader_never_raises_anything_else(text: str) -> None:
    spec = bounded(lambda: parse_spec(text.encode("utf-8", "surrogatepass"), "kliko.yml"))
    if spec is not None:
        spec.model_dump_json()  # what the memo and the displays do with it


@FUZZ
@given(text=texts)
def test_the_chain_loader_never_raises_anything_else(tmp_path: Path, text: str) -> None:
    path = tmp_path / "chain.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    chain = bounded(lambda: load_chain(path))
    if chain is not None:
        for params in [step.params for step in chain.steps.values()]:
            checked = bounded(lambda p=params: validate_parameters(SPEC, p, where="s"))
            if checked is not None:
                checked.parameters_json()
