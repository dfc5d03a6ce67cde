"""Images whose kliko.yml is hostile, made the upstream way and used through the command as a
user would: every command ends in one line (or the image's help) with status 2, fast, without a
traceback, and no escape sequence from the image reaches the terminal (issue 18)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]
KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")

SCRIPT = "#!/bin/sh\necho ran\n"
HEAD = "schema_version: 3\nio: split\n"
ESCAPES = "\\e]0;PWNED\\a\\e[2J"  # YAML double-quoted escapes: a window title, clear screen


def bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "".join(f"  {line}\n" for line in lines)


SPECS = {
    "bomb": "defs:\n"
    + bomb()
    + HEAD
    + "sections:\n- name: s\n  fields:\n  - {name: f, type: int, initial: *a8}\n",
    "long-initial": HEAD
    + f"sections:\n- name: s\n  fields:\n  - {{name: n, type: int, initial: {'9' * 5000}}}\n",
    "escapes": HEAD
    + f'name: "evil{ESCAPES}"\ndescription: "about{ESCAPES}"\n'
    + "sections:\n- name: s\n  fields:\n"
    + f'  - {{name: n, type: int, initial: 1, label: "lab{ESCAPES}", help_text: "h{ESCAPES}"}}\n'
    + f'  - {{name: mode, type: choice, choices: {{a: "A{ESCAPES}"}}, initial: a}}\n',
    "huge": HEAD + "sections: []\n" + ("# padding\n" * 120_000),
}


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    tags: dict[str, str] = {}
    try:
        for name, spec in SPECS.items():
            tags[name] = kliko_image_builder(root / name, spec, SCRIPT)
        yield tags
    finally:
        if tags:
            subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


def assert_clean(done: subprocess.CompletedProcess[bytes]) -> str:
    out = done.stdout + done.stderr
    assert b"Traceback" not in out, out[-3000:]
    assert b"\x1b" not in out and b"\x07" not in out, "an escape sequence reached the terminal"
    return out.decode("utf-8", "replace")


def assert_one_line_error(done: subprocess.CompletedProcess[bytes], *said: str) -> str:
    text = assert_clean(done)
    assert done.returncode == 2, text
    error = done.stderr.decode()
    assert error.startswith("kliko-async: error: ") and error.count("\n") == 1, error[:3000]
    assert len(error) < 2000
    for part in said:
        assert part in error, error
    return error


@pytest.mark.parametrize(
    ("image", "said"),
    [
        ("bomb", "aliases expand the document to"),
        ("long-initial", "an integer of 5000 digits is longer than the 100 digits allowed"),
        ("huge", "more than the 1,048,576 bytes allowed"),
    ],
)
def test_validate_refuses_a_hostile_kliko_yml_in_one_line(
    kliko: KlikoCli, hostile: dict[str, str], image: str, said: str
) -> None:
    done = kliko.raw("validate", hostile[image], "--cache-dir", "c", timeout=60)
    assert_one_line_error(done, f"image {hostile[image]}:/kliko.yml", said)


@pytest.mark.parametrize("image", ["bomb", "long-initial", "huge"])
def test_run_and_run_image_refuse_it_the_same_way(
    kliko: KlikoCli, hostile: dict[str, str], tmp_path: Path, image: str
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  a: {{image: {hostile[image]}}}\n")
    assert_one_line_error(kliko.raw("run", chain, "--cache-dir", "c", "--plain", timeout=60))
    assert_one_line_error(kliko.raw("run-image", hostile[image], "--help", timeout=60))


def test_escape_sequences_in_help_and_labels_never_reach_the_terminal(
    kliko: KlikoCli, hostile: dict[str, str]
) -> None:
    shown = kliko.raw("validate", hostile["escapes"], "--cache-dir", "c")
    assert shown.returncode == 0, shown.stderr
    text = assert_clean(shown)
    assert "evil" in text and "PWNED" not in text, "the window title stays as it was"

    helped = kliko.raw("run-image", hostile["escapes"], "--help")
    assert helped.returncode == 0, helped.stderr
    text = assert_clean(helped)
    assert "about" in text and "--mode" in text and "PWNED" not in text

    refused = kliko.raw("run-image", hostile["escapes"], "--mode", "b\x1b[2J")
    assert_one_line_error(refused, "is not one of the choices")


def peak_of_validate(kliko: KlikoCli, tag: str) -> int:
    """`kliko-async validate TAG`'s peak memory, having checked that it refused the kliko.yml in
    one line as longer than allowed."""
    done, peak = kliko.measured("validate", tag)
    assert_one_line_error(done, "more than the 1,048,576 bytes allowed")
    return peak


def test_a_kliko_yml_of_hundreds_of_megabytes_is_never_read_whole(
    tmp_path: Path, kliko: KlikoCli, hostile: dict[str, str]
) -> None:
    """The image's kliko.yml is read only as far as the size it may have: validating an image
    whose kliko.yml is 300 MB costs about as much memory as one whose kliko.yml is just over the
    bound (1.2 MB), measured the same way side by side (it cost 705 MB, against about 60 MB).
    The margin (64 MiB) is a fifth of the file, so reading it whole cannot pass."""
    context = tmp_path / "giant"
    context.mkdir()
    (context / "kliko").write_text(SCRIPT)
    (context / "kliko").chmod(0o755)
    (context / "Dockerfile").write_text(
        "FROM kliko-async/busybox\nCOPY kliko /kliko\n"
        "RUN dd if=/dev/zero of=/kliko.yml bs=1M count=300 2>/dev/null\n"
    )
    tag = f"kliko-async-test/giant-yml-{uuid.uuid4().hex[:10]}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True)
    try:
        giant = peak_of_validate(kliko, tag)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    small = peak_of_validate(kliko, hostile["huge"])
    assert giant < small + 64 * 2**20, f"peak {giant:,} bytes against {small:,} for 1.2 MB"
