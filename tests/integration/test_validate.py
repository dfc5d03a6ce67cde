"""``kliko-async validate``: check a kliko.yml (a file, or inside an image); list its parameters."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

ROOT = Path(__file__).resolve().parents[2]
GEN_FIELDS = ["n", "scale", "prefix", "header"]


def parameter_names(table: str) -> list[str]:
    """The ``name`` column of the parameter table that validate prints."""
    names = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 6 and cells[1]:
            names.append(cells[1])
    return names


@pytest.fixture
def private_gen_image() -> Iterator[str]:
    """A copy of example/gen with an image ID of its own.

    Counting the containers created for one image must not be disturbed by anyone else using
    the same engine (another test run reading example/gen at the same moment).
    """
    tag = f"kliko-async-test/gen-{uuid.uuid4().hex[:12]}"
    dockerfile = f"FROM example/gen\nLABEL io.kliko-async.test={tag}\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        text=True,
        capture_output=True,
        check=True,
    )
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def flat(text: str) -> str:
    """``text`` with every run of whitespace made one space: rich wraps long titles."""
    return " ".join(text.split())


def image_id(ref: str) -> str:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_validate_an_image_prints_its_parameter_table(kliko: KlikoCli, tmp_path: Path) -> None:
    done = kliko("validate", "example/gen", "--cache-dir", tmp_path / "cache")

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == GEN_FIELDS
    assert "example/gen" in done.stdout
    assert "split IO" in flat(done.stdout)
    assert "valid: 4 parameter(s)" in done.stdout


def test_validate_reads_an_image_once_then_from_the_cache(
    kliko: KlikoCli,
    tmp_path: Path,
    private_gen_image: str,
    container_creations: Callable[[float, float], list[dict[str, str]]],
) -> None:
    cache = tmp_path / "cache"
    wanted = image_id(private_gen_image)

    def probes_while(*args: str | Path) -> list[dict[str, str]]:
        since = time.time()
        done = kliko(*args)
        until = time.time() + 0.5
        assert done.returncode == 0, done.stderr
        assert parameter_names(done.stdout) == GEN_FIELDS
        return [c for c in container_creations(since, until) if c.get("image") == wanted]

    first = probes_while("validate", private_gen_image, "--cache-dir", cache)
    assert len(first) == 1, "the first read copies /kliko.yml out of one created container"
    assert first[0].get("io.kliko-async.probe") == "1"

    again = probes_while("validate", private_gen_image, "--cache-dir", cache)
    assert again == [], "the second read of the same image ID must come from the cache folder"


def test_a_truncated_kliko_yml_memo_is_read_from_the_image_again(
    kliko: KlikoCli,
    tmp_path: Path,
    private_gen_image: str,
    container_creations: Callable[[float, float], list[dict[str, str]]],
) -> None:
    cache = tmp_path / "cache"
    assert kliko("validate", private_gen_image, "--cache-dir", cache).returncode == 0
    (memo,) = (cache / "specs").glob("*.kliko.yml")
    memo.write_bytes(memo.read_bytes()[: memo.stat().st_size // 2])  # a crash mid-write

    since = time.time()
    done = kliko("validate", private_gen_image, "--cache-dir", cache)
    until = time.time() + 0.5

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == GEN_FIELDS
    wanted = image_id(private_gen_image)
    assert len([c for c in container_creations(since, until) if c.get("image") == wanted]) == 1
    again = kliko("validate", private_gen_image, "--cache-dir", cache)
    assert again.returncode == 0 and parameter_names(again.stdout) == GEN_FIELDS


def test_validate_a_kliko_yml_file(kliko: KlikoCli) -> None:
    path = ROOT / "examples" / "images" / "merge" / "kliko.yml"

    done = kliko("validate", path)

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == ["separator"]
    assert "join IO" in flat(done.stdout)
    assert "choice (dash, none)" in flat(done.stdout)


def test_validate_a_folder_holding_a_kliko_yml(kliko: KlikoCli, tmp_path: Path) -> None:
    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "kliko.yml").write_bytes((ROOT / "examples/images/gen/kliko.yml").read_bytes())

    done = kliko("validate", folder)

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == GEN_FIELDS


KLIKO_YML_HEAD = """\
schema_version: 3
name: broken
io: split
sections:
  - name: options
    description: Options
    fields:
      - name: n
"""


@pytest.mark.parametrize(
    ("field_lines", "expected"),
    [
        pytest.param("        type: integre\n", ["'n'", "type 'integre'"], id="unknown-type"),
        pytest.param(
            "        type: int\n        intial: 3\n", ["'n'", "'intial'", "'initial'"], id="typo"
        ),
    ],
)
def test_validate_an_invalid_kliko_yml_names_the_file_and_field(
    kliko: KlikoCli, tmp_path: Path, field_lines: str, expected: list[str]
) -> None:
    path = tmp_path / "kliko.yml"
    path.write_text(KLIKO_YML_HEAD + field_lines)

    done = kliko("validate", path)

    assert done.returncode != 0
    message = done.stderr.strip()
    assert "Traceback" not in done.stderr
    assert "\n\n" not in message, "one paragraph"
    assert str(path) in message
    for part in expected:
        assert part in message


def test_validate_an_image_without_kliko_yml_is_a_clear_error(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    done = kliko("validate", "kliko-async/busybox", "--cache-dir", tmp_path / "cache")

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "kliko-async/busybox" in done.stderr
    assert "no /kliko.yml" in done.stderr
    assert "not a Kliko image" in done.stderr


def test_validate_does_without_a_default_cache_it_may_not_read(
    kliko: KlikoCli, locked: Path, as_any_user: list[str]
) -> None:
    """Its cache only remembers kliko.yml files: one you may not read (XDG_CACHE_HOME in
    another user's home) is no reason to refuse, as the commands that read results do."""
    kliko.env["XDG_CACHE_HOME"] = str(locked)

    done = kliko("validate", "example/gen", before=as_any_user)

    assert done.returncode == 0, done.stderr
    assert "valid: 4 parameter(s)" in done.stdout
