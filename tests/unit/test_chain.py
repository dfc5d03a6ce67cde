"""Tests for chain files: loading, the list and mapping forms, and every check on the DAG."""

from __future__ import annotations

import itertools
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kliko_async.errors import ChainError
from kliko_async.model.chain import (
    STEP_NAME_PATTERN,
    Chain,
    ChainFile,
    Resources,
    Step,
    StepSpec,
    chain_from_pairs,
    chain_json_schema,
    load_chain,
    parse_chain,
)

DIAMOND = """\
steps:
  gen:
    image: example/gen
    params: {n: 5}
  upper:
    image: example/upper
    inputs: [gen]
    retries: 2
    timeout: 60
    resources: {cpus: 1, memory: 512m}
    user: "1000:1000"
    env: {OMP_NUM_THREADS: "1"}
  lower: {image: example/lower, inputs: [gen]}
  merge: {image: example/merge, inputs: [upper, lower]}
"""


def write(tmp_path: Path, text: str, name: str = "chain.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """Load ``text`` as a chain file that must fail; return its path and the message."""
    path = write(tmp_path, text)
    with pytest.raises(ChainError) as info:
        load_chain(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return path, message


def parse(data: Any, base_dir: Path | None = None) -> Chain:
    return parse_chain(data, source="chain.yml", base_dir=base_dir or Path("/chains"))


def parse_error(data: Any) -> str:
    with pytest.raises(ChainError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith("chain.yml: "), message
    return message


# --------------------------------------------------------------------------------------------
# The mapping form
# --------------------------------------------------------------------------------------------


def test_diamond_in_mapping_form_loads_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, DIAMOND)
    chain = load_chain(path)

    assert chain.source == str(path)
    assert list(chain.steps) == ["gen", "upper", "lower", "merge"]
    gen, upper, merge = chain.steps["gen"], chain.steps["upper"], chain.steps["merge"]
    assert gen.image == "example/gen"
    assert gen.build is None
    assert gen.params == {"n": 5}
    assert gen.inputs == ()
    assert gen.retries == 0
    assert gen.retry_backoff == 1.0
    assert gen.timeout is None
    assert gen.resources == Resources()
    assert gen.user is None
    assert gen.env == {}
    assert upper.inputs == ("gen",)
    assert upper.retries == 2
    assert upper.timeout == 60.0
    assert upper.resources == Resources(cpus=1.0, memory=512 * 1024**2)
    assert upper.user == "1000:1000"
    assert upper.env == {"OMP_NUM_THREADS": "1"}
    assert merge.inputs == ("upper", "lower")


def test_diamond_order_dependents_and_downstream(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, DIAMOND))

    assert chain.topological_order() == ["gen", "upper", "lower", "merge"]
    assert chain.dependents() == {
        "gen": ("upper", "lower"),
        "upper": ("merge",),
        "lower": ("merge",),
        "merge": (),
    }
    assert chain.downstream("gen") == {"upper", "lower", "merge"}
    assert chain.downstream("upper") == {"merge"}
    assert chain.downstream("merge") == set()


def test_downstream_of_an_unknown_step_suggests_a_name(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, DIAMOND))
    with pytest.raises(ChainError, match=r"no step named 'uper' \(did you mean 'upper'"):
        chain.downstream("uper")


def test_steps_are_frozen(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, DIAMOND))
    with pytest.raises(ValidationError, match="frozen"):
        chain.steps["gen"].retries = 3  # type: ignore[misc]


def test_a_matching_name_key_is_accepted_in_mapping_form() -> None:
    chain = parse({"steps": {"gen": {"name": "gen", "image": "example/gen"}}})
    assert list(chain.steps) == ["gen"]


def test_retry_backoff_and_gpus_are_kept() -> None:
    chain = parse(
        {"steps": {"gen": {"image": "x", "retry_backoff": 0.5, "resources": {"gpus": 2}}}}
    )
    assert chain.steps["gen"].retry_backoff == 0.5
    assert chain.steps["gen"].resources.gpus == 2


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    chain = load_chain(
        write(
            tmp_path,
            """\
            steps:
              a: &common {image: example/a, retries: 1, timeout: 5}
              b: {<<: *common, retries: 3, inputs: [a]}
            """,
        )
    )
    assert chain.steps["b"].retries == 3
    assert chain.steps["b"].timeout == 5.0
    assert chain.steps["b"].image == "example/a"


# --------------------------------------------------------------------------------------------
# The list form and Kliko's run_chain
# --------------------------------------------------------------------------------------------


def test_list_form_default_names_dedup_and_linear_inputs(tmp_path: Path) -> None:
    chain = load_chain(
        write(
            tmp_path,
            """\
            steps:
              - image: kliko/simms:0.1
                params: {telescope: meerkat}
              - image: registry.example.org:5000/kliko/simms@sha256:0123abcd
              - image: simms
              - image: example/lwimager:latest
            """,
        )
    )
    assert list(chain.steps) == ["simms", "simms-2", "simms-3", "lwimager"]
    assert chain.steps["simms"].params == {"telescope": "meerkat"}
    assert chain.steps["simms"].inputs == ()
    assert chain.steps["simms-2"].inputs == ("simms",)
    assert chain.steps["simms-3"].inputs == ("simms-2",)
    assert chain.steps["lwimager"].inputs == ("simms-3",)
    assert chain.topological_order() == list(chain.steps)


def test_list_form_explicit_names_and_inputs_override_defaults() -> None:
    chain = parse(
        {
            "steps": [
                {"image": "example/gen"},
                {"name": "gen", "image": "example/other"},
                {"image": "example/a", "inputs": []},
                {"image": "example/b", "inputs": ["gen", "gen-2"]},
                {"image": "example/c"},
            ]
        }
    )
    # The explicit name 'gen' wins; the unnamed first step takes the next free name.
    assert list(chain.steps) == ["gen-2", "gen", "a", "b", "c"]
    assert chain.steps["gen"].inputs == ("gen-2",)
    assert chain.steps["a"].inputs == ()
    assert chain.steps["b"].inputs == ("gen", "gen-2")
    assert chain.steps["c"].inputs == ("b",)


def test_list_form_default_names_are_safe_folder_names(tmp_path: Path) -> None:
    long_image = "example/" + "x" * 100
    chain = parse(
        {
            "steps": [
                {"build": "My Images/gen tool"},
                {"build": "_private"},
                {"image": long_image},
                {"image": long_image},
            ]
        },
        base_dir=tmp_path,
    )
    assert list(chain.steps) == ["gen-tool", "private", "x" * 100, "x" * 98 + "-2"]
    assert all(re.match(STEP_NAME_PATTERN, name) for name in chain.steps)


def test_list_form_name_from_image_id() -> None:
    chain = parse({"steps": [{"image": "sha256:" + "ab12" * 16}]})
    assert list(chain.steps) == ["ab12ab12ab12"]


def test_chain_from_pairs_builds_a_linear_chain() -> None:
    chain = chain_from_pairs(
        [("kliko/simms:0.1", {"telescope": "meerkat"}), ("kliko/lwimager", {}), ("kliko/simms", {})]
    )
    assert chain.source == "<run_chain>"
    assert list(chain.steps) == ["simms", "lwimager", "simms-2"]
    assert chain.steps["simms"].params == {"telescope": "meerkat"}
    assert chain.steps["lwimager"].inputs == ("simms",)
    assert chain.steps["simms-2"].inputs == ("lwimager",)


def test_chain_from_pairs_reports_bad_items() -> None:
    with pytest.raises(
        ChainError, match=r"<run_chain>: item 2 is 'oops', not an \(image, params\)"
    ):
        chain_from_pairs([("kliko/simms", {}), "oops"])  # type: ignore[list-item]
    with pytest.raises(
        ChainError, match=r"<run_chain>: step #1: image: String should have at least 1 character"
    ):
        chain_from_pairs([("", {})])
    with pytest.raises(
        ChainError, match=r"step #1 \(image x\): params: Input should be a valid dict"
    ):
        chain_from_pairs([("x", ["n", 5])])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# Build contexts
# --------------------------------------------------------------------------------------------


def test_build_paths_resolve_against_the_chain_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "chains"
    folder.mkdir()
    path = write(
        folder,
        f"""\
        steps:
          - build: images/gen
          - build: ../shared/upper/
          - build: .
          - build: {tmp_path / "abs" / "merge"}
        """,
    )
    chain = load_chain(path)

    builds = [step.build for step in chain.steps.values()]
    assert builds == [
        folder / "images" / "gen",
        tmp_path / "shared" / "upper",
        folder,
        tmp_path / "abs" / "merge",
    ]
    assert all(build is not None and build.is_absolute() for build in builds)
    assert list(chain.steps) == ["gen", "upper", "chains", "merge"]
    assert all(step.image is None for step in chain.steps.values())


def test_build_relative_to_a_relative_chain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "steps: {gen: {build: ctx}}\n")
    monkeypatch.chdir(tmp_path)
    chain = load_chain(Path("sub/chain.yml"))
    assert chain.source == os.path.join("sub", "chain.yml")
    assert chain.steps["gen"].build == tmp_path / "sub" / "ctx"


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (1000, 1000),
        ("1000", 1000),
        ("512b", 512),
        ("100k", 100 * 1024),
        ("100K", 100 * 1024),
        ("512m", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1.5gib", 3 * 1024**3 // 2),
        (" 4 MiB ", 4 * 1024**2),
        ("1t", 1024**4),
        (2.0, 2),
    ],
)
def test_memory_sizes_become_bytes(written: object, expected: int) -> None:
    assert Resources.model_validate({"memory": written}).memory == expected


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("12x", "is not a size"),
        ("m", "is not a size"),
        ("5ib", "is not a size"),
        ("1.5.2g", "is not a size"),
        ("-1g", "is not a size"),
        (True, "not a boolean"),
        (1.5, "not a whole number"),
        (0, "greater than 0"),
        (-5, "greater than 0"),
        ([1], "valid integer"),
    ],
)
def test_bad_memory_sizes_are_refused(written: object, problem: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        Resources.model_validate({"memory": written})


def test_bad_memory_in_a_chain_names_the_step(tmp_path: Path) -> None:
    _, message = load_error(tmp_path, "steps: {gen: {image: x, resources: {memory: lots}}}")
    assert "step 'gen': resources.memory: memory 'lots' is not a size" in message
    assert "'512m'" in message


def test_resources_check_cpus_and_gpus() -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        Resources(cpus=0)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Resources(gpus=-1)


# --------------------------------------------------------------------------------------------
# Reading and YAML errors
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ChainError) as info:
        load_chain(path)
    assert str(info.value) == (
        f"{path}: chain file not found. Check the path and the current folder."
    )


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="is a folder, not a chain file"):
        load_chain(tmp_path)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermissionError(13, "Permission denied"), "cannot be read: permission denied"),
        (OSError(5, "Input/output error"), "cannot be read: Input/output error"),
    ],
)
def test_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, expected: str
) -> None:
    path = write(tmp_path, DIAMOND)

    def refuse(fd: int, size: int) -> bytes:
        raise error

    monkeypatch.setattr("kliko_async.model.inputfiles.os.read", refuse)
    with pytest.raises(ChainError) as info:
        load_chain(path)
    assert str(info.value).startswith(f"{path}: {expected}. Check")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "chain.yml"
    path.write_bytes(b"steps:\n  gen: {image: \xff}\n")
    with pytest.raises(ChainError, match=r"is not UTF-8 text \(byte 0xff at offset 22\)"):
        load_chain(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    _, message = load_error(tmp_path, text)
    assert "is empty; a chain file needs a 'steps' mapping or list" in message


def test_not_yaml_gives_line_and_column(tmp_path: Path) -> None:
    _, message = load_error(tmp_path, "steps:\n  gen: {image: x\n  upper: [\n")
    assert "is not valid YAML at line 3, column 8: while parsing a flow mapping" in message
    _, message = load_error(tmp_path, "steps:\n  gen:\n    image: a: b\n")
    assert "is not valid YAML at line 3, column 13: mapping values are not allowed" in message


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- gen\n- upper\n", "list"), ("just text\n", "string"), ("42\n", "number")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    _, message = load_error(tmp_path, text)
    assert f"the top level is a {kind}, but a chain file is a mapping with a 'steps' key" in message


def test_duplicate_step_names_in_mapping_form(tmp_path: Path) -> None:
    _, message = load_error(
        tmp_path,
        """\
        steps:
          gen: {image: example/gen}
          upper: {image: example/upper, inputs: [gen]}
          gen: {image: example/other}
        """,
    )
    assert "key 'gen' appears twice in the same mapping" in message
    assert "at line 2, column 3 and again at line 4, column 3" in message
    assert "Remove or rename one of them" in message


def test_duplicate_keys_inside_a_step(tmp_path: Path) -> None:
    _, message = load_error(
        tmp_path,
        """\
        steps:
          gen:
            image: example/gen
            params: {n: 1, n: 2}
        """,
    )
    assert "key 'n' appears twice" in message
    assert "line 4" in message


def test_duplicate_step_names_in_list_form() -> None:
    message = parse_error(
        {"steps": [{"name": "a", "image": "x"}, {"image": "y"}, {"name": "a", "image": "z"}]}
    )
    assert "step #3 'a': name 'a' is already used by step #1 'a'" in message
    assert "Give every step a different name" in message


# --------------------------------------------------------------------------------------------
# Structure and field errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"steps": {}}, "'steps' is empty; add at least one step"),
        ({"steps": []}, "'steps' is empty; add at least one step"),
        ({"steps": None}, "'steps' is empty; add at least one step"),
        ({}, "has no 'steps' key"),
        ({"steps": "gen"}, "'steps' is a string; it must be a mapping"),
        (
            {"step": {"gen": {"image": "x"}}},
            "unknown top-level key(s) 'step' (did you mean 'steps'?)",
        ),
        (None, "is empty"),
    ],
)
def test_structure_errors(data: Any, expected: str) -> None:
    assert expected in parse_error(data)


def test_field_errors_name_the_step_and_field_and_are_all_joined(tmp_path: Path) -> None:
    _, message = load_error(
        tmp_path,
        """\
        steps:
          gen: {image: example/gen, timeout: 0, imge: x}
          upper: {image: example/upper, retries: -1, resources: {cpu: 2}}
          lower: {image: example/lower, env: {A: 1}, inputs: gen}
        """,
    )
    assert "step 'gen': timeout: Input should be greater than 0" in message
    assert "step 'gen': unknown key 'imge' (did you mean 'image'?)" in message
    assert "step 'upper': retries: Input should be greater than or equal to 0" in message
    assert "step 'upper': resources: unknown key 'cpu' (did you mean 'cpus'?)" in message
    assert "step 'lower': env.A: Input should be a valid string" in message
    assert "step 'lower': inputs: Input should be a valid list" in message
    assert message.count("; ") >= 5


def test_list_form_field_errors_name_the_step_by_position() -> None:
    message = parse_error(
        {"steps": [{"image": "a"}, {"image": "example/b", "timeout": -1}, "example/c"]}
    )
    assert "step #2 (image example/b): timeout: Input should be greater than 0" in message
    assert "step #3 is a string; a step is a mapping with 'image' or 'build'" in message


def test_step_that_is_not_a_mapping(tmp_path: Path) -> None:
    _, message = load_error(tmp_path, "steps:\n  gen: example/gen\n")
    assert "step 'gen' is a string; a step is a mapping with 'image' or 'build'" in message


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"image": "x", "build": "y"}, "step 'gen': gives both 'image' and 'build'"),
        ({"params": {}}, "step 'gen': gives neither 'image' nor 'build'"),
    ],
)
def test_exactly_one_of_image_and_build(step: dict[str, Any], expected: str) -> None:
    assert expected in parse_error({"steps": {"gen": step}})


def test_name_in_mapping_form_must_match_its_key() -> None:
    message = parse_error({"steps": {"gen": {"name": "other", "image": "x"}}})
    assert "step 'gen': 'name' says 'other'; in the mapping form the key is the name" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../x", "step name '../x' is not safe as a folder name"),
        ("a/b", "step name 'a/b' is not safe as a folder name"),
        ("..", "step name '..' is not safe as a folder name"),
        (".hidden", "step name '.hidden' is not safe as a folder name"),
        ("has space", "step name 'has space' is not safe"),
        ("", "a step name is empty"),
        ("x" * 101, "is 101 characters long; the limit is 100"),
        (7, "step name 7 is a number, not text; quote it"),
    ],
)
def test_unsafe_step_names_in_mapping_form(name: object, expected: str) -> None:
    assert expected in parse_error({"steps": {name: {"image": "x"}}})


def test_unsafe_step_names_in_list_form() -> None:
    message = parse_error({"steps": [{"name": "../etc", "image": "x"}]})
    assert "step #1 '../etc': name: step name '../etc' is not safe as a folder name" in message


def test_longest_safe_name_is_accepted() -> None:
    name = "n" * 100
    assert re.match(STEP_NAME_PATTERN, name)
    assert list(parse({"steps": {name: {"image": "x"}}}).steps) == [name]


# --------------------------------------------------------------------------------------------
# Graph errors
# --------------------------------------------------------------------------------------------


def test_unknown_input_suggests_close_names(tmp_path: Path) -> None:
    _, message = load_error(
        tmp_path,
        """\
        steps:
          gen: {image: example/gen}
          upper: {image: example/upper, inputs: [gne]}
          lower: {image: example/lower, inputs: [nothing-like-it]}
        """,
    )
    assert (
        "step 'upper' has input 'gne', but there is no such step (did you mean 'gen'?)" in message
    )
    assert "step 'lower' has input 'nothing-like-it', but there is no such step. Each" in message
    assert message.endswith("Each input must be the name of another step in the same chain.")


def test_step_listing_itself(tmp_path: Path) -> None:
    _, message = load_error(tmp_path, "steps: {gen: {image: x, inputs: [gen]}}")
    assert "step 'gen' lists itself as an input" in message


def test_input_listed_twice() -> None:
    message = parse_error(
        {"steps": {"a": {"image": "x"}, "b": {"image": "y", "inputs": ["a", "a"]}}}
    )
    assert "step 'b' lists input 'a' more than once" in message


def test_cycle_is_printed(tmp_path: Path) -> None:
    _, message = load_error(
        tmp_path,
        """\
        steps:
          a: {image: x, inputs: [c]}
          b: {image: x, inputs: [a]}
          c: {image: x, inputs: [b]}
          d: {image: x, inputs: [a]}
          e: {image: x}
        """,
    )
    assert "the steps' inputs form a cycle: a -> b -> c -> a" in message
    assert "Remove one of these inputs so the steps form a DAG" in message


def test_cycle_in_list_form_via_explicit_inputs() -> None:
    message = parse_error(
        {"steps": [{"name": "a", "image": "x", "inputs": ["b"]}, {"name": "b", "image": "y"}]}
    )
    assert "cycle: a -> b -> a" in message


def test_building_a_chain_directly_runs_the_same_checks() -> None:
    step = Step(
        name="a",
        image="x",
        build=None,
        params={},
        inputs=("b",),
        retries=0,
        retry_backoff=1.0,
        timeout=None,
        resources=Resources(),
        user=None,
        env={},
    )
    with pytest.raises(ChainError, match="step 'a' has input 'b', but there is no such step"):
        Chain(source="made", steps={"a": step})
    with pytest.raises(ChainError, match="stored under a different name"):
        Chain(source="made", steps={"z": step.model_copy(update={"inputs": ()})})


def test_error_lists_are_capped() -> None:
    steps = {f"s{i}": {"image": "x", "timeout": 0} for i in range(30)}
    message = parse_error({"steps": steps})
    assert message.count("Input should be greater than 0") == 20
    assert "and 10 more problem(s)" in message


# --------------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------------


def test_topological_order_is_stable_and_valid() -> None:
    chain = parse(
        {
            "steps": {
                "merge": {"image": "x", "inputs": ["upper", "lower"]},
                "upper": {"image": "x", "inputs": ["gen"]},
                "report": {"image": "x"},
                "lower": {"image": "x", "inputs": ["gen"]},
                "gen": {"image": "x"},
            }
        }
    )
    # Ready steps are taken in file order: 'report' before 'gen', 'upper' before 'lower'.
    assert chain.topological_order() == ["report", "gen", "upper", "lower", "merge"]
    assert chain.topological_order() == chain.topological_order()


def test_a_file_in_dependency_order_keeps_its_order() -> None:
    chain = parse(
        {
            "steps": {
                "a": {"image": "x"},
                "b": {"image": "x", "inputs": ["a"]},
                "c": {"image": "x"},
                "d": {"image": "x", "inputs": ["c", "b"]},
            }
        }
    )
    assert chain.topological_order() == ["a", "b", "c", "d"]


@st.composite
def random_dags(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int]]:
    """A node count, edges (earlier, later) and a file order (a permutation of the nodes)."""
    count = draw(st.integers(min_value=1, max_value=25))
    pairs = [(i, j) for j in range(count) for i in range(j)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=60)) if pairs else []
    order = draw(st.permutations(range(count)))
    return count, edges, order


def dag_data(count: int, edges: list[tuple[int, int]], order: list[int]) -> dict[str, Any]:
    inputs: dict[int, list[str]] = {node: [] for node in range(count)}
    for source, target in edges:
        inputs[target].append(f"n{source}")
    return {"steps": {f"n{node}": {"image": "x", "inputs": inputs[node]} for node in order}}


@settings(max_examples=150, deadline=None)
@given(random_dags())
def test_random_dags_order_inputs_first_and_back_edges_are_cycles(
    dag: tuple[int, list[tuple[int, int]], list[int]],
) -> None:
    count, edges, order = dag
    chain = parse(dag_data(count, edges, order))

    topo = chain.topological_order()
    assert sorted(topo) == sorted(chain.steps)
    position = {name: index for index, name in enumerate(topo)}
    for step in chain.steps.values():
        for name in step.inputs:
            assert position[name] < position[step.name]

    # downstream agrees with a brute-force reachability over the edges.
    for node in range(count):
        reach: set[int] = set()
        frontier = [node]
        while frontier:
            current = frontier.pop()
            for earlier, later in edges:
                if earlier == current and later not in reach:
                    reach.add(later)
                    frontier.append(later)
        assert chain.downstream(f"n{node}") == {f"n{target}" for target in reach}

    if not edges:
        return
    source, target = edges[0]
    data = dag_data(count, [*edges, (target, source)], order)
    with pytest.raises(ChainError) as info:
        parse(data)
    found = re.search(r"cycle: (.*?)\. Remove", str(info.value))
    assert found is not None, str(info.value)
    names = found.group(1).split(" -> ")
    assert names[0] == names[-1]
    assert len(set(names[:-1])) == len(names) - 1
    for feeder, reader in itertools.pairwise(names):
        assert feeder in data["steps"][reader]["inputs"]


@settings(max_examples=50, deadline=None)
@given(random_dags())
def test_a_file_already_in_dependency_order_is_kept(
    dag: tuple[int, list[tuple[int, int]], list[int]],
) -> None:
    count, edges, _ = dag
    chain = parse(dag_data(count, edges, list(range(count))))
    assert chain.topological_order() == list(chain.steps)


# --------------------------------------------------------------------------------------------
# Schema and size
# --------------------------------------------------------------------------------------------


def test_json_schema_describes_steps() -> None:
    schema = chain_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert schema["required"] == ["steps"]
    assert "steps" in schema["properties"]
    assert schema["additionalProperties"] is False
    step_schema = schema["$defs"]["StepSpec"]
    assert {"image", "build", "params", "inputs", "timeout", "resources"} <= set(
        step_schema["properties"]
    )
    assert all(field.get("description") for field in step_schema["properties"].values())
    assert step_schema["oneOf"] == [{"required": ["image"]}, {"required": ["build"]}]
    assert step_schema["properties"]["image"]["type"] == "string"
    mapping_form = schema["properties"]["steps"]["anyOf"][0]
    assert mapping_form["propertyNames"]["pattern"] == STEP_NAME_PATTERN
    assert mapping_form["additionalProperties"] == {"$ref": "#/$defs/StepSpec"}
    memory = schema["$defs"]["Resources"]["properties"]["memory"]["anyOf"]
    assert {"integer", "string"} <= {option.get("type") for option in memory}


def test_chain_file_model_accepts_both_forms() -> None:
    mapping = ChainFile.model_validate({"steps": {"gen": {"image": "x"}}})
    listed = ChainFile.model_validate({"steps": [{"image": "x"}]})
    assert isinstance(mapping.steps, dict)
    assert isinstance(mapping.steps["gen"], StepSpec)
    assert isinstance(listed.steps, list)
    assert listed.steps[0].image == "x"


def test_ten_thousand_step_linear_chain_loads(tmp_path: Path) -> None:
    lines = ["steps:", "  s0: {image: example/step}"]
    lines += [f"  s{i}: {{image: example/step, inputs: [s{i - 1}]}}" for i in range(1, 10_000)]
    chain = load_chain(write(tmp_path, "\n".join(lines) + "\n"))

    assert len(chain.steps) == 10_000
    assert chain.topological_order() == [f"s{i}" for i in range(10_000)]
    assert chain.steps["s9999"].inputs == ("s9998",)
    assert len(chain.downstream("s0")) == 9_999


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"A=B": "x"}, "'A=B' holds '='"),
        ({"": "x"}, "empty name"),
        ({"A": "a\0b"}, "'A' holds a NUL byte"),
        ({"A\0": "b"}, "holds a NUL byte"),
    ],
)
def test_env_names_and_values_the_engine_would_mangle_are_refused_naming_the_step(
    env: dict[str, str], says: str
) -> None:
    message = parse_error({"steps": {"noisy": {"image": "example/gen", "env": env}}})
    assert "step 'noisy'" in message and says in message, message
    with pytest.raises(ValidationError, match=re.escape(says)):  # and built directly too
        Step(
            name="noisy", image="x", build=None, params={}, inputs=(), retries=0,
            retry_backoff=0, timeout=None, resources=Resources(), user=None, env=env,
        )  # fmt: skip


@pytest.mark.parametrize("user", ["nobody", "root; rm -rf /", "1000:", ":1000", "1000:1000:1"])
def test_a_user_that_is_not_a_numeric_uid_or_uid_gid_is_refused_at_load(
    tmp_path: Path, user: str
) -> None:
    text = f"steps:\n  a: {{image: example/gen}}\n  b: {{image: example/gen, user: {user!r}}}\n"
    _, message = load_error(tmp_path, text)
    assert f"step 'b': user: {user!r} is not a numeric uid or uid:gid" in message


@pytest.mark.parametrize("user", ["1000", "1000:1000", "0:0"])
def test_a_numeric_user_is_kept(user: str) -> None:
    chain = parse({"steps": {"a": {"image": "example/gen", "user": user}}})
    assert chain.steps["a"].user == user
