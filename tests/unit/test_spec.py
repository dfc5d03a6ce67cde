"""Tests for kliko.yml parsing and parameter validation."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kliko_async.errors import ParameterError, SpecError
from kliko_async.model.parameters import (
    FileParameter,
    ValidatedParameters,
    parse_cli_value,
    validate_parameters,
)
from kliko_async.model.spec import FIELD_TYPES, Field, KlikoSpec, load_spec, parse_spec

SOURCE = "examples/gen/kliko.yml"
WHERE = "step 'gen' (image example/gen)"

FULL_SPEC = """\
schema_version: {version}
name: example/gen
description: writes N numbered lines
author: Someone
email: someone@example.org
url: https://example.org/gen
container: example/gen
io: split
sections:
  - name: generator
    description: what to make
    fields:
      - name: n
        type: int
        initial: 5
        label: Lines
        help_text: how many lines
      - name: mode
        type: choice
        choices: {{fast: Fast mode, slow: Slow mode}}
        initial: fast
      - name: title
        type: str
        max_length: 20
        required: true
  - name: extras
    fields:
      - {{name: scale, type: float, initial: 2}}
      - {{name: verbose, type: bool, initial: false}}
      - {{name: model, type: file, required: false}}
      - {{name: counts, type: "List[int]", initial: [1, 2]}}
      - {{name: weights, type: "List[float]"}}
      - {{name: switches, type: "List[bool]"}}
      - {{name: tags, type: "List[str]", max_length: 3}}
      - {{name: inputs, type: "List[file]"}}
"""


def spec_text(body: str) -> str:
    """A minimal valid header followed by ``body`` (dedented)."""
    return "schema_version: 3\nio: split\n" + textwrap.dedent(body)


def one_field_spec(field_yaml: str) -> str:
    return spec_text(
        f"""\
        sections:
          - name: only
            fields:
              - {field_yaml}
        """
    )


def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SOURCE)
    return str(info.value)


@pytest.fixture
def spec() -> KlikoSpec:
    return parse_spec(FULL_SPEC.format(version=3), SOURCE)


def parameter_error(spec: KlikoSpec, params: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ParameterError) as info:
        validate_parameters(spec, params, where=WHERE, **kwargs)
    return str(info.value)


# --- parsing valid specs --------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4])
def test_valid_spec_parses_with_every_field_type(version: int) -> None:
    spec = parse_spec(FULL_SPEC.format(version=version), SOURCE)

    assert spec.schema_version == version
    assert spec.name == "example/gen"
    assert spec.email == "someone@example.org"
    assert spec.io == "split"
    assert [s.name for s in spec.sections] == ["generator", "extras"]
    assert spec.sections[0].description == "what to make"
    assert spec.sections[1].description == ""
    fields = spec.fields()
    assert list(fields) == [
        "n",
        "mode",
        "title",
        "scale",
        "verbose",
        "model",
        "counts",
        "weights",
        "switches",
        "tags",
        "inputs",
    ]
    assert {f.type for f in fields.values()} == set(FIELD_TYPES)
    assert fields["n"].initial == 5
    assert fields["n"].label == "Lines"
    assert fields["n"].help_text == "how many lines"
    assert fields["mode"].choices == {"fast": "Fast mode", "slow": "Slow mode"}
    assert fields["title"].required is True
    assert fields["title"].max_length == 20
    assert fields["model"].required is False


def test_field_kind_predicates(spec: KlikoSpec) -> None:
    fields = spec.fields()
    assert [(name, f.is_file(), f.is_list()) for name, f in fields.items()] == [
        ("n", False, False),
        ("mode", False, False),
        ("title", False, False),
        ("scale", False, False),
        ("verbose", False, False),
        ("model", True, False),
        ("counts", False, True),
        ("weights", False, True),
        ("switches", False, True),
        ("tags", False, True),
        ("inputs", True, True),
    ]
    assert fields["inputs"].item_type() == "file"
    assert fields["n"].item_type() == "int"


def test_bytes_input_and_join_io() -> None:
    spec = parse_spec(spec_text("sections: []\n").replace("split", "join").encode(), SOURCE)
    assert spec.io == "join"
    assert spec.sections == []
    assert spec.fields() == {}
    assert spec.name is None


def test_legacy_char_type_becomes_str() -> None:
    spec = parse_spec(one_field_spec("{name: title, type: char, max_length: 4}"), SOURCE)
    assert spec.fields()["title"].type == "str"
    assert spec.fields()["title"].max_length == 4


def test_field_names_may_contain_dashes_and_underscores() -> None:
    spec = parse_spec(one_field_spec("{name: _out-dir, type: str}"), SOURCE)
    assert list(spec.fields()) == ["_out-dir"]


def test_load_spec_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "kliko.yml"
    path.write_text(FULL_SPEC.format(version=2))
    assert load_spec(path).schema_version == 2


# --- spec errors ----------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    message = spec_error(spec_text("sections: []\nauthr: me\n"))
    assert message.startswith(f"{SOURCE}: ")
    assert "unknown key 'authr'" in message
    assert "did you mean 'author'" in message


def test_unknown_key_in_a_field() -> None:
    message = spec_error(one_field_spec("{name: n, type: int, colour: red}"))
    assert message.startswith(SOURCE)
    assert "sections[0].fields[0] ('n')" in message
    assert "unknown key 'colour'" in message
    assert "allowed keys are name, type" in message


def test_unknown_key_in_a_section() -> None:
    message = spec_error(spec_text("sections:\n  - name: s\n    fields: []\n    extra: 1\n"))
    assert "sections[0] ('s'): unknown key 'extra'" in message


def test_bad_io() -> None:
    message = spec_error("schema_version: 3\nio: both\nsections: []\n")
    assert message.startswith(SOURCE)
    assert "io must be 'split' or 'join'" in message
    assert "'both'" in message


def test_bad_schema_version() -> None:
    message = spec_error("schema_version: 5\nio: split\nsections: []\n")
    assert "schema_version must be 2, 3 or 4" in message
    assert "5" in message


def test_unknown_type_names_field_and_lists_types() -> None:
    text = spec_text(
        """\
        sections:
          - name: generator
            fields:
              - {name: n, type: int}
              - {name: mode, type: chioce, choices: {fast: Fast}}
        """
    )
    message = spec_error(text)
    assert message.startswith(
        f"{SOURCE}: sections[0].fields[1] ('mode'): type 'chioce' is not a Kliko type; "
        "use one of choice, str, float"
    )
    assert "List[file]" in message


def test_choice_without_choices() -> None:
    message = spec_error(one_field_spec("{name: mode, type: choice}"))
    assert "sections[0].fields[0] ('mode')" in message
    assert "type 'choice' needs a non-empty 'choices'" in message


def test_choice_with_empty_choices() -> None:
    message = spec_error(one_field_spec("{name: mode, type: choice, choices: {}}"))
    assert "needs a non-empty 'choices'" in message


def test_choices_on_a_non_choice_type() -> None:
    message = spec_error(one_field_spec("{name: n, type: int, choices: {a: A}}"))
    assert "('n'): 'choices' is only allowed with type 'choice', not 'int'" in message


def test_max_length_on_a_non_string_type() -> None:
    message = spec_error(one_field_spec("{name: n, type: int, max_length: 3}"))
    assert "('n'): 'max_length' is only allowed with type 'str' or 'List[str]'" in message


def test_max_length_must_be_positive() -> None:
    message = spec_error(one_field_spec("{name: t, type: str, max_length: 0}"))
    assert "('t'): max_length" in message
    assert "greater than 0" in message


def test_choice_initial_not_among_choices() -> None:
    message = spec_error(
        one_field_spec("{name: mode, type: choice, choices: {fast: F, slow: S}, initial: medium}")
    )
    assert "sections[0].fields[0] ('mode')" in message
    assert "initial value 'medium'" in message
    assert "not one of the choices fast, slow" in message


@pytest.mark.parametrize(
    ("field_yaml", "expected"),
    [
        ("{name: n, type: int, initial: '5'}", "expected an integer, got a string '5'"),
        ("{name: n, type: int, initial: true}", "expected an integer, got a boolean True"),
        ("{name: x, type: float, initial: no}", "expected a number, got a boolean False"),
        ("{name: b, type: bool, initial: 1}", "expected true or false, got an integer 1"),
        ("{name: t, type: str, max_length: 2, initial: abc}", "3 characters long; the limit is 2"),
        ("{name: l, type: 'List[int]', initial: [1, x]}", "item 1: expected an integer"),
        ("{name: l, type: 'List[int]', initial: 3}", "expected a list of int"),
    ],
)
def test_initial_must_fit_the_field(field_yaml: str, expected: str) -> None:
    message = spec_error(one_field_spec(field_yaml))
    assert "sections[0].fields[0]" in message
    assert "initial value" in message
    assert expected in message


def test_field_name_must_be_a_usable_flag() -> None:
    message = spec_error(one_field_spec("{name: 'my field', type: int}"))
    assert "name 'my field' cannot be used as a command-line flag" in message


def test_field_without_type() -> None:
    message = spec_error(one_field_spec("{name: n}"))
    assert "sections[0].fields[0] ('n'): missing required key 'type'" in message


def test_field_that_is_not_a_mapping() -> None:
    message = spec_error(one_field_spec("7"))
    assert "sections[0].fields[0]: must be a mapping of keys, not an integer 7" in message


def test_missing_sections() -> None:
    message = spec_error("schema_version: 3\nio: split\n")
    assert message == f"{SOURCE}: missing required key 'sections'"


def test_null_sections_are_not_an_empty_list() -> None:
    message = spec_error("schema_version: 3\nio: split\nsections:\n")
    assert message == f"{SOURCE}: sections must be a list, not null"


def test_duplicate_field_names_across_sections() -> None:
    text = spec_text(
        """\
        sections:
          - name: a
            fields:
              - {name: n, type: int}
          - name: b
            fields:
              - {name: n, type: float}
        """
    )
    message = spec_error(text)
    assert message.startswith(SOURCE)
    assert (
        "sections[1].fields[0] ('n'): field name 'n' is already used by sections[0].fields[0]"
        in message
    )


def test_yaml_syntax_error_gives_line_and_column() -> None:
    message = spec_error("schema_version: 3\nio: split\n  bad: indent\nsections: []\n")
    assert message.startswith(
        f"{SOURCE}: is not valid YAML at line 3, column 6: mapping values are not allowed"
    )
    assert message.endswith("Fix the YAML syntax there (indentation, colons, quotes).")


def test_yaml_syntax_error_in_a_flow_list() -> None:
    message = spec_error("schema_version: 3\nio: split\nsections: [\n  - name: a\n")
    assert message.startswith(f"{SOURCE}: is not valid YAML at line 4, column 3: ")


def test_duplicate_yaml_key_is_an_error() -> None:
    message = spec_error("schema_version: 3\nio: split\nio: join\nsections: []\n")
    assert "line 3" in message
    assert (
        "key 'io' appears twice in the same mapping, at line 2, column 1 and again at line 3, "
        "column 1; YAML would silently keep only the last one"
    ) in message


def test_document_that_is_not_a_mapping() -> None:
    message = spec_error("- a\n- b\n")
    assert message.startswith(SOURCE)
    assert "a list" in message
    assert "not a mapping" in message


def test_empty_document() -> None:
    assert "is empty" in spec_error("")


def test_non_string_key() -> None:
    message = spec_error("schema_version: 3\nio: split\nsections: []\nyes: 1\n")
    assert "key True must be a string" in message


def test_several_problems_are_reported_together() -> None:
    message = spec_error("schema_version: 9\nio: both\nextra: 1\n")
    parts = message.removeprefix(f"{SOURCE}: ").split("; ")
    assert any(p.startswith("schema_version must be") for p in parts)
    assert any(p.startswith("io must be") for p in parts)
    assert "missing required key 'sections'" in parts
    assert any(p.startswith("unknown key 'extra'") for p in parts)


def test_image_source_is_named() -> None:
    with pytest.raises(SpecError, match=r"^image example/gen:/kliko\.yml: "):
        parse_spec("io: split\n", "image example/gen:/kliko.yml")


def test_undecodable_bytes() -> None:
    with pytest.raises(SpecError, match="not UTF-8"):
        parse_spec(b"\xff\xfe\x00", SOURCE)


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: file does not exist"


def test_load_spec_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)


def test_models_are_frozen(spec: KlikoSpec) -> None:
    with pytest.raises(ValueError, match="frozen"):
        spec.fields()["n"].required = True  # type: ignore[misc]


# --- validate_parameters --------------------------------------------------------------------


def test_defaults_are_filled_in(spec: KlikoSpec) -> None:
    result = validate_parameters(spec, {"title": "hello"}, where=WHERE)
    assert result.values == {
        "n": 5,
        "mode": "fast",
        "title": "hello",
        "scale": 2.0,
        "verbose": False,
        "counts": [1, 2],
    }
    assert isinstance(result.values["scale"], float)
    assert result.files == ()


@pytest.mark.parametrize(
    ("io", "initial", "expected"),
    [
        ("split", "/etc/shadow", "/etc/shadow"),
        ("split", "conf/defaults.cfg", "/input/conf/defaults.cfg"),
        ("join", "defaults.cfg", "/work/defaults.cfg"),
        ("join", "../etc/passwd", "/etc/passwd"),
    ],
)
def test_a_file_default_from_the_image_is_a_container_path_never_a_host_file(
    tmp_path: Path, io: str, initial: str, expected: str
) -> None:
    """Only a path the user gives is a host file: an image's default is never read here."""
    secret = tmp_path / "conf" / "defaults.cfg"
    secret.parent.mkdir()
    secret.write_text("host secret")
    spec = parse_spec(
        f"schema_version: 3\nio: {io}\nsections:\n  - name: s\n    fields:\n"
        f"      - {{name: conf, type: file, initial: {initial!r}}}\n"
        f"      - {{name: more, type: 'List[file]', initial: [{initial!r}, /data/x]}}\n",
        SOURCE,
    )

    result = validate_parameters(spec, {}, where=WHERE, base_dir=tmp_path)

    assert result.values == {"conf": expected, "more": [expected, "/data/x"]}
    assert result.files == (), "nothing is copied from the host"
    given = validate_parameters(spec, {"conf": str(secret)}, where=WHERE)
    assert [f.host_path for f in given.files] == [secret]


def test_given_values_override_defaults_and_none_means_not_given(spec: KlikoSpec) -> None:
    result = validate_parameters(
        spec,
        {"title": "t", "n": 7, "mode": "slow", "scale": None, "weights": [1, 0.5]},
        where=WHERE,
    )
    assert result.values["n"] == 7
    assert result.values["mode"] == "slow"
    assert result.values["scale"] == 2.0
    assert result.values["weights"] == [1.0, 0.5]
    assert all(isinstance(w, float) for w in result.values["weights"])


def test_parameters_json_is_complete_and_sorted(spec: KlikoSpec) -> None:
    result = validate_parameters(
        spec, {"title": "hi", "switches": [True, False], "tags": ["a", "bc"]}, where=WHERE
    )
    text = result.parameters_json()
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "counts": [1, 2],
        "mode": "fast",
        "n": 5,
        "scale": 2.0,
        "switches": [True, False],
        "tags": ["a", "bc"],
        "title": "hi",
        "verbose": False,
    }
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


@given(st.dictionaries(st.text(max_size=6), SCALARS | st.lists(SCALARS, max_size=3), max_size=6))
def test_parameters_json_is_the_indented_dump_of_any_values(values: dict[str, Any]) -> None:
    # Scalars are written by a faster path than json's indenting encoder: the same text,
    # one field to a line (Kliko images read it with sed), whatever the values are.
    text = ValidatedParameters(values=values).parameters_json()
    assert text == json.dumps(values, sort_keys=True, indent=2) + "\n"


def test_unknown_parameter_suggests_close_match(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": "x", "titel": "y"})
    assert message == f"{WHERE}: unknown parameter 'titel' (did you mean 'title'?)"


def test_unknown_parameter_without_close_match_lists_known(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": "x", "zzzz": 1})
    assert "unknown parameter 'zzzz'; known parameters are n, mode, title" in message


def test_unknown_parameter_when_image_takes_none() -> None:
    empty = parse_spec(spec_text("sections: []\n"), SOURCE)
    message = parameter_error(empty, {"x": 1})
    assert "this image takes no parameters" in message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"n": True}, "parameter 'n': expected an integer, got a boolean True"),
        ({"n": 1.5}, "parameter 'n': expected an integer, got a number 1.5"),
        ({"n": "5"}, "parameter 'n': expected an integer, got a string '5'"),
        ({"scale": False}, "parameter 'scale': expected a number, got a boolean False"),
        ({"scale": float("nan")}, "parameter 'scale': expected a finite number"),
        ({"verbose": 1}, "parameter 'verbose': expected true or false, got an integer 1"),
        ({"verbose": "true"}, "parameter 'verbose': expected true or false, got a string"),
        ({"mode": "medium"}, "parameter 'mode': 'medium' is not one of the choices fast, slow"),
        ({"mode": ["fast"]}, "parameter 'mode': ['fast'] is not one of the choices"),
        ({"counts": 3}, "parameter 'counts': expected a list of int, got an integer 3"),
        ({"counts": [1, True]}, "parameter 'counts': item 1: expected an integer"),
        ({"switches": [1]}, "parameter 'switches': item 0: expected true or false"),
        ({"weights": ["a"]}, "parameter 'weights': item 0: expected a number, got a string"),
        ({"model": 3}, "parameter 'model': expected a file path, got an integer 3"),
    ],
)
def test_wrong_types(spec: KlikoSpec, params: dict[str, Any], expected: str) -> None:
    message = parameter_error(spec, {"title": "ok", **params})
    assert message.startswith(f"{WHERE}: ")
    assert expected in message


def test_title_as_number_is_a_wrong_type(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": 12})
    assert "parameter 'title': expected a string, got an integer 12" in message


def test_missing_required(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {})
    assert message == f"{WHERE}: parameter 'title' (str) is required but not given"


def test_required_given_as_none_is_missing(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": None})
    assert "parameter 'title' (str) is required but not given" in message


def test_required_with_initial_is_satisfied() -> None:
    spec = parse_spec(one_field_spec("{name: k, type: int, required: true, initial: 3}"), SOURCE)
    assert validate_parameters(spec, {}, where=WHERE).values == {"k": 3}


def test_string_over_max_length(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": "x" * 25})
    assert "parameter 'title'" in message
    assert "is 25 characters long; the limit is 20" in message


def test_list_item_over_max_length(spec: KlikoSpec) -> None:
    message = parameter_error(spec, {"title": "t", "tags": ["ok", "long"]})
    assert "parameter 'tags': item 1: 'long' is 4 characters long; the limit is 3" in message


def test_several_problems_reported_together(spec: KlikoSpec, tmp_path: Path) -> None:
    message = parameter_error(
        spec,
        {"titel": "x", "n": "five", "mode": "medium", "model": "missing.bin"},
        base_dir=tmp_path,
    )
    problems = message.removeprefix(f"{WHERE}: ").split("; ")
    assert len(problems) == 5
    assert "unknown parameter 'titel' (did you mean 'title'?)" in problems
    assert "parameter 'title' (str) is required but not given" in problems
    assert any(p.startswith("parameter 'n': expected an integer") for p in problems)
    assert any(p.startswith("parameter 'mode': 'medium'") for p in problems)
    assert any(p.startswith("file parameter 'model'") for p in problems)


def test_file_parameter_path_rewriting(spec: KlikoSpec, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    result = validate_parameters(
        spec, {"title": "t", "model": "model.bin"}, where=WHERE, base_dir=tmp_path
    )
    assert result.values["model"] == "/param_files/model"
    assert result.files == (
        FileParameter(
            name="model",
            host_path=(tmp_path / "model.bin").resolve(),
            container_path="/param_files/model",
        ),
    )
    assert json.loads(result.parameters_json())["model"] == "/param_files/model"


def test_list_of_files_path_rewriting(spec: KlikoSpec, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(b"A")
    (tmp_path / "sub" / "b.txt").write_bytes(b"B")
    absolute = str((tmp_path / "a.txt").resolve())
    result = validate_parameters(
        spec,
        {"title": "t", "inputs": ["a.txt", Path("sub/b.txt"), absolute]},
        where=WHERE,
        base_dir=tmp_path,
    )
    assert result.values["inputs"] == [
        "/param_files/inputs/0-a.txt",
        "/param_files/inputs/1-b.txt",
        "/param_files/inputs/2-a.txt",
    ]
    assert [(f.name, f.container_path, f.sha256) for f in result.files] == [
        ("inputs", "/param_files/inputs/0-a.txt", None),
        ("inputs", "/param_files/inputs/1-b.txt", None),
        ("inputs", "/param_files/inputs/2-a.txt", None),
    ]
    assert [f.host_path for f in result.files] == [
        (tmp_path / "a.txt").resolve(),
        (tmp_path / "sub" / "b.txt").resolve(),
        (tmp_path / "a.txt").resolve(),
    ]
    assert all(f.host_path.is_absolute() for f in result.files)


def test_relative_file_resolves_against_cwd_without_base_dir(
    spec: KlikoSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.bin").write_bytes(b"m")
    monkeypatch.chdir(tmp_path)
    result = validate_parameters(spec, {"title": "t", "model": "m.bin"}, where=WHERE)
    assert result.files[0].host_path == (tmp_path / "m.bin").resolve()


def test_file_parameter_that_is_a_folder(spec: KlikoSpec, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    message = parameter_error(spec, {"title": "t", "model": "data"}, base_dir=tmp_path)
    assert "file parameter 'model': 'data'" in message
    assert "is a folder, not a file" in message


def test_file_parameter_that_does_not_exist(spec: KlikoSpec, tmp_path: Path) -> None:
    message = parameter_error(spec, {"title": "t", "model": "gone.bin"}, base_dir=tmp_path)
    assert f"file parameter 'model': 'gone.bin' ({tmp_path.resolve() / 'gone.bin'})" in message
    assert message.endswith("does not exist")


def test_missing_file_in_a_list(spec: KlikoSpec, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"A")
    message = parameter_error(spec, {"title": "t", "inputs": ["a.txt", "b.txt"]}, base_dir=tmp_path)
    assert "file parameter 'inputs': 'b.txt'" in message
    assert "'a.txt'" not in message


# --- parse_cli_value ------------------------------------------------------------------------


def _field(type_: str, **extra: Any) -> Field:
    return Field(name="flag", type=type_, **extra)


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("int", "5", 5),
        ("int", "-12", -12),
        ("float", "2.5", 2.5),
        ("float", "3", 3.0),
        ("bool", "true", True),
        ("bool", "YES", True),
        ("bool", "1", True),
        ("bool", "False", False),
        ("bool", "no", False),
        ("bool", "0", False),
        ("str", "hello, world", "hello, world"),
        ("file", "data/in.txt", "data/in.txt"),
        ("List[int]", "1,2, 3", [1, 2, 3]),
        ("List[float]", "1.5,2", [1.5, 2.0]),
        ("List[bool]", "yes,0,True", [True, False, True]),
        ("List[str]", "a, b,c", ["a", "b", "c"]),
        ("List[file]", "x.txt,y.txt", ["x.txt", "y.txt"]),
        ("List[int]", "", []),
    ],
)
def test_parse_cli_value(type_: str, text: str, expected: Any) -> None:
    value = parse_cli_value(_field(type_), text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_cli_value_choice_is_kept_as_text() -> None:
    field = _field("choice", choices={"fast": "Fast", "slow": "Slow"})
    assert parse_cli_value(field, "slow") == "slow"


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("int", "five", "flag --flag: 'five' is not an integer"),
        ("int", "1.5", "flag --flag: '1.5' is not an integer"),
        ("float", "abc", "flag --flag: 'abc' is not a number"),
        ("float", "inf", "flag --flag: 'inf' is not a finite number"),
        ("bool", "maybe", "flag --flag: 'maybe' is not a boolean"),
        ("List[int]", "1,x,3", "flag --flag: 'x' in '1,x,3' is not an integer"),
        ("List[bool]", "yes,perhaps", "flag --flag: 'perhaps' in 'yes,perhaps' is not a boolean"),
    ],
)
def test_parse_cli_value_bad_text(type_: str, text: str, expected: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_cli_value(_field(type_), text)
    assert str(info.value).startswith(expected)


def test_cli_values_validate(spec: KlikoSpec) -> None:
    fields = spec.fields()
    params = {
        "title": parse_cli_value(fields["title"], "run"),
        "n": parse_cli_value(fields["n"], "9"),
        "counts": parse_cli_value(fields["counts"], "4,5"),
        "verbose": parse_cli_value(fields["verbose"], "yes"),
    }
    result = validate_parameters(spec, params, where=WHERE)
    assert result.values["n"] == 9
    assert result.values["counts"] == [4, 5]
    assert result.values["verbose"] is True


@given(st.lists(st.integers()))
def test_parse_cli_value_int_list_round_trip(numbers: list[int]) -> None:
    text = ",".join(str(n) for n in numbers)
    assert parse_cli_value(_field("List[int]"), text) == numbers


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False)))
def test_parse_cli_value_float_list_round_trip(numbers: list[float]) -> None:
    text = ",".join(repr(n) for n in numbers)
    assert parse_cli_value(_field("List[float]"), text) == numbers


def test_an_integer_initial_of_a_float_field_is_a_float() -> None:
    """Kliko's own simms example writes ``type: float, initial: 10``: the default is 10.0, as
    parameters.json will carry it, in validate's table and Luigi's parameters alike."""
    spec = parse_spec(
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: dtime, type: float, initial: 10}\n"
        "      - {name: steps, type: 'List[float]', initial: [1, 2.5]}\n",
        "simms.yml",
    )
    fields = spec.fields()
    assert fields["dtime"].initial == 10.0 and isinstance(fields["dtime"].initial, float)
    assert fields["steps"].initial == [1.0, 2.5]
    assert all(isinstance(v, float) for v in fields["steps"].initial)
