"""An image whose /kliko cannot be run (a plain file without an execute bit, a link to one, a
folder, a link to a folder) is refused when the chain is planned, by every command that reads
images: one paragraph that names the image and says what to do, status 2, before any step runs.
Before, a /kliko without an execute bit passed every check and failed only when its container
started ("exec: /kliko: permission denied"), after the steps before it had run."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import derived_image
from kliko_async.runtime import dockerfiles
from kliko_async.runtime.docker import DockerRuntime

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker]

KLIKO_YML = """\
schema_version: 3
name: modes
description: Its /kliko may not be executable.
io: split
sections:
  - name: s
    fields:
      - {name: word, type: str, initial: modes}
"""
SCRIPT = "#!/bin/sh\necho 'modes ran'\ncp /parameters.json /output/\n"
FIX = "RUN chmod +x /kliko"

REFUSED = {
    "not-executable": ("chmod 644 /kliko", "/kliko is not executable (mode 0644)", FIX),
    "link-to-not-executable": (
        "mkdir /app && mv /kliko /app/run.sh && chmod 640 /app/run.sh && ln -s app/run.sh /kliko",
        "/kliko is a symbolic link to '/app/run.sh', which is not executable (mode 0640)",
        FIX,
    ),
    "folder": ("rm /kliko && mkdir /kliko", "/kliko is a folder", "COPY kliko /kliko"),
    "link-to-a-folder": (
        "rm /kliko && mkdir /app && ln -s /app /kliko",
        "/kliko is a symbolic link to '/app', which is a folder",
        "COPY kliko /kliko",
    ),
}
"""How each image is made from a good one (a RUN line), what the error says of its /kliko, and
the fix it suggests."""


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("modes")
    base = kliko_image_builder(root / "modes-base", KLIKO_YML, SCRIPT)
    made = {name: derived_image(base, f"modes-{name}", run, root / name)
            for name, (run, _, _) in REFUSED.items()}  # fmt: skip
    return {"good": base, **made}


def assert_refused(done: subprocess.CompletedProcess[str], image: str, case: str) -> None:
    _, said, fix = REFUSED[case]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kliko-async: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for part in (f"image {image}", said, fix):
        assert part in done.stderr, done.stderr


@pytest.mark.parametrize("case", list(REFUSED))
def test_validate_refuses_an_image_whose_kliko_cannot_run(
    kliko: KlikoCli, images: dict[str, str], case: str
) -> None:
    done = kliko("validate", images[case], "--cache-dir", "c", timeout=60)

    assert_refused(done, images[case], case)


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_a_chain_is_refused_before_any_step_runs(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str], case: str, dry: bool
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        f"steps:\n  first: {{image: {images['good']}}}\n"
        f"  second: {{image: {images[case]}, inputs: [first]}}\n"
    )

    done = kliko("run", chain, "--cache-dir", "c", "--out", "out", "--plain",
                 *(["--dry-run"] if dry else []))  # fmt: skip

    assert_refused(done, images[case], case)
    assert "step 'second'" in done.stderr
    assert "modes ran" not in done.stdout + done.stderr, "the first step must not have run"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(REFUSED))
def test_run_image_refuses_it_too(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str], case: str
) -> None:
    helped = kliko("run-image", images[case], "--help", timeout=60)
    ran = kliko("run-image", images[case], "--output", tmp_path / "o", "--word", "x", timeout=60)

    assert_refused(helped, images[case], case)
    assert_refused(ran, images[case], case)
    assert "modes ran" not in ran.stdout + ran.stderr


def test_a_kliko_yml_remembered_before_the_check_does_not_let_the_image_through(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    """A memo written by an earlier kliko-async, which did not look at /kliko's execute bits,
    is not trusted: the image is read again, and refused."""
    tag = images["not-executable"]
    image_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    text = KLIKO_YML.encode()
    specs = tmp_path / "c" / "specs"
    specs.mkdir(parents=True)
    old_memo = b"kliko-async memo sha256=" + hashlib.sha256(text).hexdigest().encode() + b"\n"
    (specs / f"{image_id.replace(':', '-')}.kliko.yml").write_bytes(old_memo + text)

    done = kliko("validate", tag, "--cache-dir", "c", timeout=60)

    assert_refused(done, tag, "not-executable")


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["good", "not-executable"])
async def test_a_plain_kliko_is_judged_from_the_engines_stat_alone(
    monkeypatch: pytest.MonkeyPatch, images: dict[str, str], case: str
) -> None:
    """The probe asks the engine for /kliko's stat (a HEAD request) and downloads nothing of it
    when it is a plain file, executable or not: an archive download cost planning 34 ms an
    image (benchmarks/README.md)."""
    asked: list[tuple[str, str]] = []
    original = dockerfiles.engine_response

    def recording(client: Any, path: str, **query: Any) -> Any:
        asked.append((query["method"], query["params"]["path"]))
        return original(client, path, **query)

    monkeypatch.setattr(dockerfiles, "engine_response", recording)
    runtime = DockerRuntime()
    try:
        image_id = await runtime.resolve_image(images[case])
        files = await runtime.probe_image(image_id, read=["/kliko.yml"], stat=["/kliko"])
    finally:
        await runtime.aclose()

    assert [request for request in asked if request[1] == "/kliko"] == [("HEAD", "/kliko")]
    assert files.exists == {"/kliko": True}
    expected = {} if case == "good" else {"/kliko": "is not executable (mode 0644)"}
    assert files.problems == expected
