"""Small mistakes with quiet consequences, on the real engine: a cache folder whose path holds a
colon, and file names from a container printed by ``cache verify``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

# A file whose name sets the terminal's title and holds a newline.
NAMER = "#!/bin/sh\nprintf x > \"/output/$(printf 'a\\033]0;PWNED\\007b\\nc')\"\n"


def test_a_cache_folder_whose_path_holds_a_colon_runs_every_step(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n  gen: {image: example/gen, params: {n: 2}}\n"
        "  upper: {image: example/upper, inputs: [gen]}\n"
    )

    done = kliko("run", chain, "--cache-dir", tmp_path / "a:b,c", "--out", tmp_path / "out")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "out" / "upper" / "numbers.txt").read_text() == "LINE 1\nLINE 2\n"


def test_cache_verify_prints_a_hostile_file_name_without_escapes_on_one_line(
    kliko: KlikoCli, tmp_path: Path, kliko_image_builder: Builder
) -> None:
    spec = "schema_version: 3\nname: namer\nio: split\nsections: []\n"
    tag = kliko_image_builder(tmp_path / "namer", spec, NAMER)
    try:
        chain = tmp_path / "chain.yaml"
        chain.write_text(f"steps:\n  names: {{image: {tag}}}\n")
        cache = tmp_path / "cache"
        assert kliko("run", chain, "--cache-dir", cache, "--plain").returncode == 0
        [output] = [m.parent / "output" for m in (cache / "entries").rglob("manifest.json")]
        [hostile] = list(output.iterdir())
        output.chmod(0o755)
        hostile.unlink()  # the cached file goes missing: verify names it

        done = kliko.raw("cache", "verify", "--cache-dir", cache)

        assert done.returncode == 1, done.stderr
        assert not done.stderr
        assert b"\x1b" not in done.stdout and b"\x07" not in done.stdout, done.stdout
        lines = done.stdout.decode().splitlines()
        assert len(lines) == 2 and "missing" in lines[0], lines
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
