"""Images whose /kliko.yml or /kliko is a symbolic link, as upstream Kliko takes them: it reads
/kliko.yml with ``cat`` in a container, which follows the link, and the kernel follows /kliko when
it runs it. Links are followed within the image (from its root, never the host's); a link that
goes round in a loop, leads nowhere or to a folder is a one-line error (status 2), and so is a
folder at /kliko.yml."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import derived_image

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker]

KLIKO_YML = """\
schema_version: 3
name: linked
description: Its kliko.yml and kliko may be symbolic links.
io: split
sections:
  - name: s
    fields:
      - {name: word, type: str, initial: linked}
"""
SCRIPT = "#!/bin/sh\necho 'linked ran'\ncp /parameters.json /output/\n"

LINKED = {
    "absolute": "mv /kliko.yml /real.yml && ln -s /real.yml /kliko.yml",
    "relative-into-a-folder": "mkdir /app && mv /kliko.yml /app/ && ln -s app/kliko.yml /kliko.yml",
    "relative-above-the-root": "mv /kliko.yml /real.yml && ln -s ../../../real.yml /kliko.yml",
    "chain": "mkdir -p /opt/app/conf /etc/kliko && mv /kliko.yml /opt/real.yml"
    " && ln -s ../../real.yml /opt/app/conf/current && ln -s /opt/app /app"
    " && ln -s ../../app/conf/current /etc/kliko/kliko.yml && ln -s etc/kliko/kliko.yml /kliko.yml"
    " && mv /kliko /opt/app/run.sh && ln -s app/run.sh /kliko",
    "kliko-absolute": "mkdir /app && mv /kliko /app/run.sh && ln -s /app/run.sh /kliko",
}
"""How each image is made from one with a plain /kliko.yml and /kliko (a RUN line). In the chain,
/kliko.yml -> /etc/kliko/kliko.yml -> /app/conf/current -> ../../real.yml, which is /opt/real.yml
as the kernel has it (/app is a link to /opt/app), not /real.yml; and /kliko -> /app/run.sh."""

REFUSED = {
    "loop": ("rm /kliko.yml && ln -s /b.yml /kliko.yml && ln -s a.yml /b.yml && ln -s /kliko.yml "
             "/a.yml", "/kliko.yml is a symbolic link that goes round in a loop"),
    "folder": ("rm /kliko.yml && mkdir /kliko.yml && cp /kliko /kliko.yml/kliko.yml",
               "/kliko.yml is a folder"),
    "link-to-a-folder": ("mkdir /conf && mv /kliko.yml /conf/ && ln -s /conf /kliko.yml",
                         "/kliko.yml is a symbolic link to '/conf', which is a folder"),
    "dangling": ("rm /kliko.yml && ln -s /nowhere/kliko.yml /kliko.yml",
                 "/kliko.yml is a symbolic link to '/nowhere/kliko.yml', which does not exist"),
    "dangling-kliko": ("rm /kliko && ln -s /usr/bin/gone /kliko",
                       "/kliko is a symbolic link to '/usr/bin/gone', which does not exist"),
}  # fmt: skip
"""Images that are refused, made the same way, and what the error says of them."""


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("linked")
    base = kliko_image_builder(root / "linked-base", KLIKO_YML, SCRIPT)
    made = {**LINKED, **{name: run for name, (run, _) in REFUSED.items()}}
    return {
        name: derived_image(base, f"linked-{name}", run, root / name) for name, run in made.items()
    }


def run_one_step(kliko: KlikoCli, tmp_path: Path, image: str) -> subprocess.CompletedProcess[str]:
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  only: {{image: {image}, params: {{word: chained}}}}\n")
    return kliko("run", chain, "--cache-dir", "c", "--out", tmp_path / "out", "--plain")


@pytest.mark.parametrize("case", list(LINKED))
def test_validate_follows_the_links(kliko: KlikoCli, images: dict[str, str], case: str) -> None:
    done = kliko("validate", images[case], "--cache-dir", "c")

    assert done.returncode == 0, done.stderr
    assert "linked" in done.stdout and "word" in done.stdout


@pytest.mark.parametrize("case", list(LINKED))
def test_a_step_of_a_linked_image_runs(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str], case: str
) -> None:
    done = run_one_step(kliko, tmp_path, images[case])

    assert done.returncode == 0, done.stderr
    assert "linked ran" in done.stdout + done.stderr
    written = sorted((tmp_path / "out").rglob("parameters.json"))
    assert len(written) == 1, sorted((tmp_path / "out").rglob("*"))
    assert '"chained"' in written[0].read_text()


def assert_one_line_error(done: subprocess.CompletedProcess[str], *said: str) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kliko-async: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "/var/lib/docker" not in done.stderr, "the engine's host folders are not shown"
    for part in said:
        assert part in done.stderr, done.stderr


@pytest.mark.parametrize("case", list(REFUSED))
def test_validate_says_what_is_there_instead(
    kliko: KlikoCli, images: dict[str, str], case: str
) -> None:
    done = kliko("validate", images[case], "--cache-dir", "c", timeout=60)

    assert_one_line_error(done, f"image {images[case]}", REFUSED[case][1], "not a Kliko image")


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_chain_and_run_image_say_it_too(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str], case: str
) -> None:
    done = run_one_step(kliko, tmp_path, images[case])

    assert_one_line_error(done, f"image {images[case]}", REFUSED[case][1])
    assert not list((tmp_path / "out").rglob("parameters.json"))
    helped = kliko("run-image", images[case], "--help", timeout=60)
    assert_one_line_error(helped, REFUSED[case][1])


def test_a_link_to_a_huge_file_is_read_no_further_than_the_bound(
    tmp_path: Path, kliko: KlikoCli, images: dict[str, str]
) -> None:
    """What a link leads to is read within the bound of a /kliko.yml itself (1 MiB): validating
    an image whose /kliko.yml links to 64 MiB costs about what validating a small one does."""
    run = "dd if=/dev/zero of=/big.yml bs=1M count=64 2>/dev/null && rm /kliko.yml"
    tag = derived_image(
        images["absolute"], "linked-huge", f"{run} && ln -s big.yml /kliko.yml", tmp_path / "huge"
    )

    done, peak = kliko.measured("validate", tag)
    small, small_peak = kliko.measured("validate", images["absolute"])

    said = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
    assert_one_line_error(said, f"image {tag}:/kliko.yml", "more than the 1,048,576 bytes allowed")
    assert small.returncode == 0, small.stderr
    assert peak < small_peak + 32 * 2**20, f"peak {peak:,} bytes against {small_peak:,}"
