"""Chain variables (``vars:``, ``${vars.NAME}``, ``--set``) and target steps (``run CHAIN STEP``):
loading, typing by the field a value lands in, every way they can be wrong, and runs on the fake
runtime (issue 26)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.errors import ChainError, ParameterError
from kliko_async.model.chain import Chain, chain_from_pairs, chain_json_schema, load_chain
from kliko_async.runtime.fake import FakeRuntime

pytestmark = pytest.mark.anyio

TYPED = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: n, type: int, initial: 1}
      - {name: x, type: float, initial: 0.5}
      - {name: label, type: str, initial: a}
      - {name: flag, type: bool, initial: false}
      - {name: channels, type: "List[int]", initial: [1]}
"""
PLAIN = "schema_version: 3\nio: split\nsections: []\n"

CHAIN = """\
vars:
  n: 3
  label: obs1
  weights: [natural, uniform]
steps:
  gen:
    image: typed
    params: {n: "${vars.n}", label: "${vars.label}-${vars.n}"}
  image:
    image: typed
    inputs: [gen]
    matrix: {label: "${vars.weights}"}
  lone: {image: plain}
"""


def load(tmp_path: Path, text: str, **sets: str) -> Chain:
    path = tmp_path / "chain.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_chain(path, sets=sets)


def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("typed", TYPED)
    runtime.add_image("plain", PLAIN)
    return runtime


def test_a_whole_value_keeps_its_type_and_inside_text_it_is_text(tmp_path: Path) -> None:
    chain = load(tmp_path, CHAIN)
    assert chain.steps["gen"].params == {"n": 3, "label": "obs1-3"}
    assert chain.steps["image[label=uniform]"].params == {"label": "uniform"}


def test_a_matrix_over_a_variable_expands_and_set_gives_it_another_list(tmp_path: Path) -> None:
    text = """\
    vars: {weights: [natural, uniform]}
    steps:
      image: {image: typed, matrix: {label: "${vars.weights}"}}
    """
    assert sorted(load(tmp_path, text).steps) == ["image[label=natural]", "image[label=uniform]"]
    chain = load(tmp_path, text, weights="[a, b, c]")
    assert sorted(chain.steps) == ["image[label=a]", "image[label=b]", "image[label=c]"]
    with pytest.raises(ChainError, match=r"vars.weights is a list in the chain, so give a list"):
        load(tmp_path, text, weights="natural")


def test_escapes_and_text_without_variables_are_left_as_written(tmp_path: Path) -> None:
    text = """\
    vars: {n: 1}
    steps:
      a: {image: typed, params: {label: "$${vars.n} costs $$5 and ${vars.n}"}, env: {X: "$HOME"}}
    """
    chain = load(tmp_path, text)
    assert chain.steps["a"].params == {"label": "${vars.n} costs $$5 and 1"}
    assert chain.steps["a"].env == {"X": "$HOME"}


@pytest.mark.parametrize("declared", ["", "vars: {other: 1}\n"])
def test_an_undeclared_variable_is_refused_with_or_without_a_vars_section(
    tmp_path: Path, declared: str
) -> None:
    text = declared + 'steps: {a: {image: typed, params: {label: "${vars.tag}-$${HOME}"}}}\n'
    with pytest.raises(ChainError, match=r"params.label: \$\{vars.tag\} names no variable"):
        load(tmp_path, text)
    # written with a YAML escape, the reference is still seen
    with pytest.raises(ChainError, match=r"\$\{vars.tag\} names no variable"):
        load(tmp_path, declared + 'steps: {a: {image: typed, params: {label: "\\x24{vars.tag}"}}}')


def test_without_vars_an_escape_is_still_a_literal_and_python_steps_are_text(
    tmp_path: Path,
) -> None:
    chain = load(tmp_path, 'steps: {a: {image: typed, params: {label: "$${HOME}-$$x"}}}\n')
    assert chain.steps["a"].params == {"label": "${HOME}-$$x"}
    with pytest.raises(ChainError, match="declares no variable 'tag'"):
        load(tmp_path, "steps: {a: {image: typed}}\n", tag="x")
    # Kliko's run_chain pairs are Python values, not a chain file: no variables in them
    pairs = chain_from_pairs([("typed", {"label": "${HOME}"})])
    assert pairs.steps["typed"].params == {"label": "${HOME}"}


@pytest.mark.parametrize(
    ("text", "sets", "said"),
    [
        (CHAIN.replace('{n: "${vars.n}"', '{n: "${vars.nn}"'), {}, "(did you mean 'n'?)"),
        (CHAIN, {"nn": "4"}, "--set nn: the chain declares no variable 'nn' (did you mean 'n'?)"),
        ("vars: [a]\nsteps: {a: {image: plain}}\n", {}, "'vars' is a list; it must be a mapping"),
        ("vars: {1x: 2}\nsteps: {a: {image: plain}}\n", {}, "'1x' is not a variable name"),
        (
            "vars: {w: [a]}\nsteps: {a: {image: typed, params: {label: 'x-${vars.w}'}}}\n",
            {},
            "a list can be a whole value",
        ),
        ("vars: {n: 1}\nsteps: {a: {image: typed, params: {label: '${n}'}}}\n", {}, "write $${"),
        ("steps: {a: {image: plain}}\nvar: {n: 1}\n", {}, "'var' (did you mean 'vars'?)"),
    ],
)
def test_wrong_variables_are_one_clear_error_naming_the_place(
    tmp_path: Path, text: str, sets: dict[str, str], said: str
) -> None:
    with pytest.raises(ChainError) as raised:
        load(tmp_path, text, **sets)
    assert said in raised.value.message
    assert "\n" not in str(raised.value)


def test_a_list_variable_used_in_many_places_is_bounded(tmp_path: Path) -> None:
    many = "[" + ", ".join(["x"] * 1000) + "]"
    steps = "".join(
        f"  s{i}: {{image: typed, params: {{label: '${{vars.w}}'}}}}\n" for i in range(200)
    )
    with pytest.raises(ChainError, match="past 100,000 values"):
        load(tmp_path, f"vars: {{w: {many}}}\nsteps:\n{steps}")


async def test_set_values_are_typed_by_the_field_they_land_in(tmp_path: Path) -> None:
    text = """\
    vars: {v: 1, w: a}
    steps:
      as_int: {image: typed, params: {n: "${vars.v}"}}
      as_str: {image: typed, params: {label: "${vars.v}"}}
      as_float: {image: typed, params: {x: "${vars.v}"}}
      as_bool: {image: typed, params: {flag: "${vars.w}"}}
      as_list: {image: typed, params: {channels: "${vars.w}"}}
      in_list: {image: typed, params: {channels: ["${vars.v}", 9]}}
    """
    chain = load(tmp_path, text, v="007", w="3,4")
    with pytest.raises(ParameterError, match=r"'flag': the --set value '3,4' is not a boolean"):
        await api.dry_run(chain, runtime=fake(), cache_dir=tmp_path / "cache")
    chain = load(tmp_path, text, v="007", w="yes")
    with pytest.raises(ParameterError, match=r"'channels': the --set value 'yes' is not an int"):
        await api.dry_run(chain, runtime=fake(), cache_dir=tmp_path / "cache")
    chain = load(tmp_path, text.replace('channels: "${vars.w}"', "channels: [5]"), v="007", w="1")
    plan = await api.dry_run(chain, runtime=fake(), cache_dir=tmp_path / "cache")
    values = {name: step.params.values for name, step in plan.steps.items()}
    assert values["as_int"]["n"] == 7
    assert values["as_str"]["label"] == "007"  # a str field keeps the text as given
    assert values["as_float"]["x"] == 7.0
    assert values["as_bool"]["flag"] is True
    assert values["in_list"]["channels"] == [7, 9]


async def test_a_whole_variable_fits_a_field_as_the_same_set_text_does(tmp_path: Path) -> None:
    """A number reaching a text field takes its text, text reaching a number field is read as
    one (as --set text is), and setting the value the chain already has changes no key."""
    text = """\
    vars: {v: 4, s: "7", f: 0.25}
    steps:
      num_to_text: {image: typed, params: {n: "${vars.v}", label: "${vars.v}"}}
      text_to_num: {image: typed, params: {n: "${vars.s}", label: "${vars.s}", x: "${vars.s}"}}
      float_both: {image: typed, params: {x: "${vars.f}", label: "${vars.f}"}}
      in_list: {image: typed, params: {channels: ["${vars.v}", "${vars.s}"]}}
    """
    cache = tmp_path / "cache"
    plan = await api.dry_run(load(tmp_path, text), runtime=fake(), cache_dir=cache)
    values = {name: step.params.values for name, step in plan.steps.items()}
    assert values["num_to_text"] == {**values["num_to_text"], "n": 4, "label": "4"}
    assert values["text_to_num"] == {**values["text_to_num"], "n": 7, "label": "7", "x": 7.0}
    assert values["float_both"] == {**values["float_both"], "x": 0.25, "label": "0.25"}
    assert values["in_list"]["channels"] == [4, 7]
    again = await api.dry_run(
        load(tmp_path, text, v="4", s="7", f="0.25"), runtime=fake(), cache_dir=cache
    )
    assert {n: s.key for n, s in again.steps.items()} == {n: s.key for n, s in plan.steps.items()}
    # a value that fits its field as written keys as it did before variables were typed
    literal = text.replace('n: "${vars.v}", label: "${vars.v}"', "n: 4, label: '4'")
    written = await api.dry_run(load(tmp_path, literal), runtime=fake(), cache_dir=cache)
    assert written.steps["num_to_text"].key == plan.steps["num_to_text"].key


async def test_a_whole_variable_in_a_text_key_is_its_text_as_set_gives_it(tmp_path: Path) -> None:
    """user:, env: (and image:, build:) are text: a number or a boolean from vars: is put in as
    its text there, as the same --set value is, not refused as "not a valid string"."""
    text = """\
    vars: {uid: 1000, n: 4, flag: true, ratio: 0.5}
    steps:
      a:
        image: typed
        user: "${vars.uid}"
        env: {N: "${vars.n}", F: "${vars.flag}", R: "${vars.ratio}"}
    """
    chain = load(tmp_path, text)
    step = chain.steps["a"]
    assert (step.user, step.env) == ("1000", {"N": "4", "F": "true", "R": "0.5"})
    cache = tmp_path / "cache"
    plan = await api.dry_run(chain, runtime=fake(), cache_dir=cache)
    given = load(tmp_path, text, uid="1000", n="4", flag="true", ratio="0.5")
    again = await api.dry_run(given, runtime=fake(), cache_dir=cache)
    assert again.steps["a"].key == plan.steps["a"].key


async def test_a_whole_variable_that_fits_neither_way_is_said_as_written(tmp_path: Path) -> None:
    text = 'vars: {f: 2.5}\nsteps: {a: {image: typed, params: {n: "${vars.f}"}}}\n'
    with pytest.raises(ParameterError, match=r"'n': expected an integer, got a number 2.5"):
        await api.dry_run(load(tmp_path, text), runtime=fake(), cache_dir=tmp_path / "cache")


async def test_set_changes_exactly_the_keys_of_the_steps_that_use_the_variable(
    tmp_path: Path,
) -> None:
    runtime = fake()
    cache = tmp_path / "cache"
    first = await api.dry_run(load(tmp_path, CHAIN), runtime=runtime, cache_dir=cache)
    same = await api.dry_run(load(tmp_path, CHAIN, n="3"), runtime=runtime, cache_dir=cache)
    other = await api.dry_run(load(tmp_path, CHAIN, label="obs2"), runtime=runtime, cache_dir=cache)
    keys = {name: step.key for name, step in first.steps.items()}
    assert {name: step.key for name, step in same.steps.items()} == keys, "3 as text is 3"
    changed = {name for name, step in other.steps.items() if step.key != keys[name]}
    assert changed == {"gen", "image[label=natural]", "image[label=uniform]"}, "they read gen"


def test_targets_mean_their_steps_and_everything_upstream(tmp_path: Path) -> None:
    text = """\
    steps:
      gen: {image: plain}
      side: {image: plain}
      image: {image: typed, inputs: [gen], matrix: {label: [a, b]}}
      render: {image: plain, inputs: [image, side]}
      other: {image: plain, inputs: [gen]}
    """
    chain = load(tmp_path, text)
    assert list(chain.needed_for(["gen"]).steps) == ["gen"]
    assert list(chain.needed_for(["image"]).steps) == ["gen", "image[label=a]", "image[label=b]"]
    assert list(chain.needed_for(["image[label=b]", "side"]).steps) == [
        "gen",
        "side",
        "image[label=b]",
    ]
    assert len(chain.needed_for(["render"]).steps) == 5
    with pytest.raises(ChainError, match=r"no target step named 'rendr' \(did you mean 'render'"):
        chain.needed_for(["rendr"])


async def test_running_a_target_runs_only_what_it_needs_and_shares_the_cache(
    tmp_path: Path,
) -> None:
    text = """\
    steps:
      gen: {image: plain}
      upper: {image: plain, inputs: [gen]}
      lower: {image: typed, inputs: [gen], params: {label: low}}
      merge: {image: plain, inputs: [upper, lower]}
    """
    chain = load(tmp_path, text)
    runtime = fake()
    cache = tmp_path / "cache"
    part = await api.run(chain.needed_for(["lower"]), runtime=runtime, cache_dir=cache)
    assert part.ok and sorted(part.steps) == ["gen", "lower"]
    assert all(step.state == "done" for step in part.steps.values())
    whole = await api.run(chain, runtime=runtime, cache_dir=cache)
    states = {name: step.state for name, step in whole.steps.items()}
    assert states == {
        "gen": "cached",
        "lower": "cached",
        "upper": "done",
        "merge": "done",
    }


def test_the_json_schema_describes_vars() -> None:
    assert "${vars.NAME}" in chain_json_schema()["properties"]["vars"]["description"]
