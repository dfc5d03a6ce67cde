"""Hostile and mistaken inputs to the loaders: each is refused in one paragraph, in bounded time
and memory, instead of a traceback, a hang or a flood (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kliko_async.errors import ChainError, KlikoError, ParameterError, SpecError
from kliko_async.model.chain import load_chain, parse_chain
from kliko_async.model.parameters import validate_parameters
from kliko_async.model.spec import load_spec, parse_spec
from kliko_async.model.yamltext import YamlTextError, parse_yaml_bytes, parse_yaml_text

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
SPEC_HEAD = "schema_version: 3\nio: split\n"


def alias_bomb(levels: int = 9) -> str:
    """Nine lines that expand to 9**levels values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def kliko(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KLIKO_ASYNC, *args],
        cwd=cwd,
        env=dict(os.environ, XDG_CACHE_HOME=str(cwd / "xdg"), **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("kliko-async: error: ") and done.stderr.count("\n") == 1
    return done.stderr


# -- the YAML loader's bounds ----------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    with pytest.raises(
        YamlTextError, match=r"aliases expand the document to [0-9,]{11} values, more than"
    ):
        parse_yaml_text(alias_bomb())


def test_a_bomb_in_a_kliko_yml_initial_is_a_short_error() -> None:
    text = (
        "defs:\n"
        + "".join(f"  {line}\n" for line in alias_bomb(6).splitlines())
        + SPEC_HEAD
        + "sections:\n- name: s\n  fields:\n  - {name: f, type: int, initial: *a5}\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text, "kliko.yml")
    assert len(str(info.value)) < 300


def test_shared_defaults_through_aliases_still_load() -> None:
    steps = "".join(f"  s{i}: {{image: x, params: *defaults}}\n" for i in range(2000))
    data = parse_yaml_text("defaults: &defaults {a: 1, b: [1, 2, 3]}\nsteps:\n" + steps)
    assert data["steps"]["s1999"]["params"]["b"] == [1, 2, 3]


def test_a_document_that_holds_itself_is_refused() -> None:
    with pytest.raises(YamlTextError, match="refers to a collection that holds it"):
        parse_yaml_text("a: &x [1, *x]\n")


@pytest.mark.parametrize("depth", [101, 999])
def test_deep_nesting_is_refused(depth: int) -> None:
    with pytest.raises(YamlTextError, match="nest"):
        parse_yaml_text("a: " + "[" * depth + "]" * depth)


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "1" * 101, "!!int 0x" + "f" * 400])
def test_a_huge_integer_is_refused_at_its_place(number: str) -> None:
    with pytest.raises(YamlTextError) as info:
        parse_yaml_text(f"steps:\n  a: {{image: x, params: {{n: {number}}}}}\n")
    assert "at line 2, column" in info.value.message
    assert "longer than the 100 digits allowed" in info.value.message


def test_text_larger_than_its_bound_is_refused_unparsed() -> None:
    with pytest.raises(YamlTextError, match="more than the 1,000 bytes allowed"):
        parse_yaml_bytes(b"a: 1\n" * 1000, max_bytes=1000)
    with pytest.raises(SpecError, match="more than the 1,048,576 bytes allowed"):
        parse_spec(SPEC_HEAD + "sections: []\n" + "#" * (1 << 20), "image x:/kliko.yml")


# -- numbers as scientists write them ----------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("1e-3", 0.001),
        ("2E5", 200000.0),
        ("-1.5e+3", -1500.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("42", 42),
        ("1_000", 1000),
        ("1:30", "1:30"),
        ("0x10", "0x10"),
        ("0o17", "0o17"),
        ("007", "007"),
        ("2024-01-31", "2024-01-31"),
        ("=", "="),
        ("true", True),
    ],
)
def test_numbers_read_as_written(written: str, read: object) -> None:
    value = parse_yaml_text(f"v: {written}\n")["v"]
    assert value == read and type(value) is type(read)


def test_a_float_field_takes_1e_minus_3_from_a_chain() -> None:
    spec = parse_spec(
        SPEC_HEAD + "sections:\n- name: s\n  fields:\n  - {name: threshold, type: float}\n", "k"
    )
    chain = parse_chain(
        parse_yaml_text("steps:\n  a: {image: x, params: {threshold: 1e-3}}\n"),
        source="c.yaml",
        base_dir=Path("."),
    )
    checked = validate_parameters(spec, chain.steps["a"].params, where="step a")
    assert checked.values == {"threshold": 0.001}


# -- files: regular, bounded ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_a_chain_file_or_a_kliko_yml(path: str) -> None:
    with pytest.raises(ChainError, match="is not a regular file"):
        load_chain(Path(path))
    with pytest.raises(SpecError, match="is not a regular file"):
        load_spec(Path(path))


def test_from_file_dev_zero_is_one_problem(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "steps:\n  a: {image: x, matrix: {n: {from-file: /dev/zero}}}\n"
    )
    with pytest.raises(ChainError, match=r"from-file '/dev/zero' \(/dev/zero\) is not a regular"):
        load_chain(tmp_path / "c.yaml")


def test_a_huge_format_width_in_a_matrix_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "steps:\n  a:\n    image: x\n    matrix: {n: [1, 2], name: 'a-{n:>999999999}'}\n"
    )
    with pytest.raises(ChainError, match="asks for more than the 100 characters"):
        load_chain(tmp_path / "c.yaml")


# -- messages ---------------------------------------------------------------------------------


def test_a_long_value_is_cut_in_the_message() -> None:
    spec = parse_spec(
        SPEC_HEAD
        + "sections:\n- name: s\n  fields:\n  - {name: tag, type: str, max_length: 10}\n"
        + "  - {name: mode, type: choice, choices: {a: A}}\n",
        "k",
    )
    huge = "x" * (50 << 20)
    with pytest.raises(ParameterError) as info:
        validate_parameters(spec, {"tag": huge, "mode": huge, huge: 1}, where="step a")
    assert len(str(info.value)) < 1000
    assert "(52,428,800 characters)" in str(info.value)


def test_shown_never_fails_and_stays_short() -> None:
    from kliko_async.errors import shown  # the one helper that cuts values in messages

    assert shown("abc") == "'abc'"
    assert shown(10**5000) == "an integer of about 5,000 digits"
    assert len(shown([["y" * 1000] * 1000] * 1000)) < 130
    assert len(str(KlikoError("m" * 10**6, where="w", hint="Do this."))) <= 10_000


# -- through the command, as a user would ------------------------------------------------------


NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
"""A --params file is checked before the engine is asked for the image: these need none."""


def test_run_image_params_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"n": 1, "n": 2}')
    (tmp_path / "p.yaml").write_text("n: 1\nn: 2\n")
    for name in ("p.json", "p.yaml"):
        done = kliko(tmp_path, "run-image", "example/gen", "--params", name, env=NO_ENGINE)
        assert "twice" in one_line_error(done), name
    done = kliko(tmp_path, "run-image", "example/gen", "--params=missing.json", env=NO_ENGINE)
    assert "--params missing.json: does not exist" in one_line_error(done)


@pytest.mark.parametrize("host", ["garbage://x", "localhost:2375"])
def test_a_malformed_docker_host_is_one_line(tmp_path: Path, host: str) -> None:
    (tmp_path / "c.yaml").write_text("steps:\n  a: {image: example/gen}\n")
    done = kliko(tmp_path, "run", "c.yaml", "--plain", env={"DOCKER_HOST": host})
    assert f"DOCKER_HOST: {host!r} is not a Docker Engine address" in one_line_error(done)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["run", "/dev/zero"], "/dev/zero: is not a regular file"),
        (["validate", "/dev/zero"], "/dev/zero: is not a regular file"),
        (["run", "big.yaml", "--dry-run"], "an integer of 5000 digits is longer"),
        # A named pipe: without a writer, open() would wait for ever (as it did), so the
        # command is run with a timeout, not the loader in this process.
        (["run", "fifo.yaml", "--dry-run"], "fifo.yaml: is not a regular file"),
    ],
)
def test_tiny_inputs_end_in_one_line_and_status_2(
    tmp_path: Path, args: list[str], said: str
) -> None:
    (tmp_path / "big.yaml").write_text(f"steps:\n  a: {{image: x, params: {{n: {'9' * 5000}}}}}\n")
    os.mkfifo(tmp_path / "fifo.yaml")
    assert said in one_line_error(kliko(tmp_path, *args))


def test_json_with_a_huge_integer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"n": 1}).replace("1", "9" * 5000))
    done = kliko(tmp_path, "run-image", "example/gen", "--params", "p.json", env=NO_ENGINE)
    assert "5000 digits" in one_line_error(done)
