"""Bad input that involves the Docker Engine: broken images, parameters, builds, a full disk.

Every case runs ``kliko-async`` as a user would and checks the same things: a non-zero exit, one
readable message naming the step, image, file or field and what is wrong, no traceback, no
container left behind (the autouse check of conftest) and a cache whose entries are unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import new_test_tag, out_too_deep_to_copy_into

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
KLIKO_SCRIPT = "#!/bin/sh\necho 'this image ran'\necho done > /output/done.txt\n"
FILLER_SCRIPT = (
    "#!/bin/sh\necho 'filler: writing 4 MiB'\ndd if=/dev/zero of=/output/big.bin bs=64k count=64\n"
)


def build_image(context: Path, files: dict[str, str], *, executable: bool = True) -> str:
    """Build an image ``FROM kliko-async/busybox`` copying ``files`` to ``/``; its unique tag."""
    context.mkdir(parents=True)
    lines = ["FROM kliko-async/busybox"]
    for name, text in files.items():
        (context / name).write_text(text)
        if name == "kliko" and executable:
            (context / name).chmod(0o755)
        lines.append(f"COPY {name} /{name}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = new_test_tag(context.name)
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True
    )
    return tag


def spec_text(fields: str, io: str = "split") -> str:
    return f"schema_version: 3\nname: test\nio: {io}\nsections:\n  - name: s\n    fields:\n{fields}"


BAD_SPECS = {
    "unknown-type": (
        spec_text("      - {name: n, type: integre}\n"),
        ["sections[0].fields[0] ('n')", "type 'integre' is not a Kliko type"],
    ),
    "bad-io": (
        "schema_version: 3\nio: both\nsections: []\n",
        ["io must be 'split' or 'join', not a string 'both'"],
    ),
    "choice-default": (
        spec_text(
            "      - {name: mode, type: choice, choices: {fast: F, slow: S}, initial: medium}\n"
        ),
        ["sections[0].fields[0] ('mode')", "'medium' is not one of the choices fast, slow"],
    ),
    "no-sections": ("schema_version: 3\nio: split\n", ["missing required key 'sections'"]),
}

REQUIRED_SPEC = spec_text(
    "      - {name: target, type: str, required: true}\n      - {name: n, type: int, initial: 1}\n"
)


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, example_images: None
) -> Iterator[dict[str, str]]:
    """Test images built from temporary folders, removed at the end of the module."""
    root = tmp_path_factory.mktemp("images")
    tags: dict[str, str] = {}
    try:
        for name, (text, _) in BAD_SPECS.items():
            tags[name] = build_image(root / name, {"kliko.yml": text, "kliko": KLIKO_SCRIPT})
        tags["no-kliko"] = build_image(
            root / "no-kliko", {"kliko.yml": REQUIRED_SPEC.replace("true", "false")}
        )
        tags["required"] = build_image(
            root / "required", {"kliko.yml": REQUIRED_SPEC, "kliko": KLIKO_SCRIPT}
        )
        tags["filler"] = build_image(
            root / "filler", {"kliko.yml": spec_text("      []\n"), "kliko": FILLER_SCRIPT}
        )
        yield tags
    finally:
        if tags:
            subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


def snapshot(cache_root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``entries/`` with its mode, size and modification time."""
    entries = cache_root / "entries"
    found: dict[str, tuple[int, int, int]] = {}
    for path in sorted(entries.rglob("*")):
        info = path.lstat()
        found[path.relative_to(entries).as_posix()] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


SEED_CHAIN = "steps:\n  seed: {image: example/gen, params: {n: 1, prefix: seed}}\n"


def seed(folder: Path, cache: Path) -> None:
    """Run a one-step chain into ``cache``: an entry computed earlier, which must survive."""
    chain = folder / "seed.yaml"
    chain.write_text(SEED_CHAIN)
    done = subprocess.run(
        [KLIKO_ASYNC, "run", chain, "--cache-dir", cache, "--out", folder / "seed-out", "--plain"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory, example_images: None) -> Path:
    folder = tmp_path_factory.mktemp("seed")
    seed(folder, folder / "cache")
    return folder / "cache"


@pytest.fixture
def cache_dir(tmp_path: Path, seeded_template: Path) -> Iterator[Path]:
    """A copy of a cache holding one real entry; the test fails if its entries changed."""
    cache = tmp_path / "cache"
    shutil.copytree(seeded_template, cache, symlinks=True)
    before = snapshot(cache)
    assert before
    yield cache
    assert snapshot(cache) == before, "the cache entries are unchanged"
    assert not list((cache / "tmp").iterdir()), "no staging folder is left behind"


def assert_fails_clearly(
    done: subprocess.CompletedProcess[str],
    *expected: str,
    one_line: bool = True,
    started: bool = False,
) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip()
    assert message.startswith("kliko-async: error: "), message
    assert message.count("kliko-async: error:") == 1, message
    if one_line:
        assert "\n" not in message, f"one paragraph: {message}"
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    if not started:
        assert " | started" not in done.stdout, "no step may start"
    return message


def run_one_step(
    kliko: KlikoCli, tmp_path: Path, cache: Path, step: str
) -> subprocess.CompletedProcess[str]:
    """Run a chain of one step ``bad`` (``step`` is its YAML body), after a good first step."""
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  first: {{image: example/gen, params: {{n: 2}}}}\n  bad: {step}\n")
    return kliko("run", chain, "--cache-dir", cache, "--out", tmp_path / "out", "--plain")


# -- kliko.yml inside an image -----------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_validate_an_image_with_a_bad_kliko_yml(
    kliko: KlikoCli, cache_dir: Path, images: dict[str, str], case: str
) -> None:
    done = kliko("validate", images[case], "--cache-dir", cache_dir)

    assert_fails_clearly(done, f"image {images[case]}:/kliko.yml", *BAD_SPECS[case][1])


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_run_a_chain_whose_image_has_a_bad_kliko_yml(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path, images: dict[str, str], case: str
) -> None:
    done = run_one_step(kliko, tmp_path, cache_dir, f"{{image: {images[case]}, inputs: [first]}}")

    assert_fails_clearly(done, "step 'bad'", f"{images[case]}:/kliko.yml", *BAD_SPECS[case][1])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param("kliko-async/busybox", "has no /kliko.yml", id="no-kliko-yml"),
        pytest.param("no-kliko", "has no /kliko executable", id="no-kliko-executable"),
    ],
)
def test_an_image_that_is_not_a_kliko_image(
    kliko: KlikoCli,
    tmp_path: Path,
    cache_dir: Path,
    images: dict[str, str],
    image: str,
    expected: str,
) -> None:
    ref = images.get(image, image)

    done = run_one_step(kliko, tmp_path, cache_dir, f"{{image: {ref}}}")
    assert_fails_clearly(done, "step 'bad'", f"image {ref}", expected, "not a Kliko image")

    checked = kliko("validate", ref, "--cache-dir", cache_dir)
    assert_fails_clearly(checked, f"image {ref}", expected, "not a Kliko image")


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(
            "{n: many}", ["parameter 'n': expected an integer, got a string 'many'"], id="type"
        ),
        pytest.param(
            "{scale: true}", ["parameter 'scale': expected a number, got a boolean"], id="bool"
        ),
        pytest.param("{nn: 3}", ["unknown parameter 'nn' (did you mean 'n'?)"], id="unknown"),
        pytest.param(
            "{prefix: " + "x" * 40 + "}",
            ["parameter 'prefix'", "40 characters long; the limit is 32"],
            id="too-long",
        ),
        pytest.param(
            "{header: missing/header.txt}",
            ["file parameter 'header'", "missing/header.txt", "does not exist"],
            id="file-missing",
        ),
        pytest.param(
            "{header: a-folder}",
            ["file parameter 'header'", "a-folder", "is a folder, not a file"],
            id="file-is-folder",
        ),
        pytest.param(
            "{header: /dev/zero}",
            ["file parameter 'header'", "/dev/zero", "not a regular file"],
            id="file-is-device",
        ),
    ],
)
def test_bad_parameters_are_refused_before_any_container_runs(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path, params: str, expected: list[str]
) -> None:
    (tmp_path / "a-folder").mkdir()

    done = run_one_step(kliko, tmp_path, cache_dir, f"{{image: example/gen, params: {params}}}")

    assert_fails_clearly(done, "step 'bad'", "example/gen", *expected)
    assert not (tmp_path / "out").exists()


def test_a_missing_required_parameter_is_named(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path, images: dict[str, str]
) -> None:
    done = run_one_step(kliko, tmp_path, cache_dir, f"{{image: {images['required']}}}")

    assert_fails_clearly(
        done, "step 'bad'", images["required"], "parameter 'target' (str) is required but not given"
    )


def test_every_bad_step_is_reported_at_once(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        "  one: {image: example/gen, params: {n: x}}\n"
        "  two: {image: example/upper, params: {sufix: .u}, inputs: [one]}\n"
        "  three: {image: example/does-not-exist}\n"
    )

    done = kliko("run", chain, "--cache-dir", cache_dir, "--plain")

    assert_fails_clearly(
        done,
        "chain.yaml: 3 problems were found before running",
        "step 'one'",
        "step 'two'",
        "unknown parameter 'sufix' (did you mean 'suffix'?)",
        "step 'three'",
        "example/does-not-exist",
    )


# -- images and builds -------------------------------------------------------------------------


def test_an_image_tag_that_does_not_exist_locally(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path
) -> None:
    tag = f"kliko-async-test/absent-{uuid.uuid4().hex[:8]}:1.0"

    done = run_one_step(kliko, tmp_path, cache_dir, f"{{image: '{tag}'}}")

    assert_fails_clearly(done, "step 'bad'", tag, "not present on this engine", "Build it first")
    assert done.returncode == 2, "an image the chain names that is not there is bad input"


def test_a_build_that_fails_shows_the_build_error(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path
) -> None:
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM kliko-async/busybox\nRUN echo 'compiling the calibrator' && false\n"
    )

    done = run_one_step(kliko, tmp_path, cache_dir, "{build: broken}")

    message = assert_fails_clearly(
        done,
        "step 'bad'",
        str(context),
        "the build failed",
        "returned a non-zero code: 1",
        one_line=False,
    )
    assert "compiling the calibrator" in message, "the build's own output is shown"


@pytest.mark.parametrize(
    ("build", "said", "dry_run"),
    [
        ("empty", "no Dockerfile in the build folder", False),
        ("nowhere", "the build folder does not exist", False),
        ("nowhere", "the build folder does not exist", True),
        ("a-file", "is not a folder", False),
        ("a-file", "is not a folder", True),
    ],
)
def test_a_build_folder_that_cannot_be_built_is_bad_input(
    kliko: KlikoCli, tmp_path: Path, cache_dir: Path, build: str, said: str, dry_run: bool
) -> None:
    """examples/chains/build.yaml, whose folder was missing, failed with exit status 1, as a run
    whose step failed, and said 'building image from' the folder first."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  first: {{image: example/gen}}\n  bad: {{build: {build}}}\n")

    done = kliko("run", chain, "--cache-dir", cache_dir, "--plain", *["--dry-run"] * dry_run)

    assert_fails_clearly(done, "step 'bad'", f"build '{tmp_path / build}': {said}")
    assert done.returncode == 2, "the chain names a build folder that is not there: bad input"
    if build != "empty":  # what a folder must hold is the engine's to say, as it builds
        assert "building image" not in done.stdout


def test_outputs_that_cannot_be_exported_keep_the_computed_steps(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The run itself succeeds; copying to ``--out`` fails, the cache keeps all. (An --out that
    cannot be written at all is refused before the run: unit/test_cli_errors.py.) Here --out
    can be written, but a copy's path inside it is longer than the system allows."""
    out = out_too_deep_to_copy_into(tmp_path)
    chain = tmp_path / "chain.yaml"
    chain.write_text("steps:\n  gen: {image: example/gen, params: {n: 2}}\n")
    cache = tmp_path / "cache"

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert_fails_clearly(
        done,
        f"--out {out}",
        "could not copy the output of step 'gen'",
        "File name too long",
        "Every finished step is kept in the cache",
        started=True,
    )
    assert done.returncode == 1, "the run's outputs were not all copied: it failed"
    assert "gen | done" in done.stdout
    again = kliko("run", chain, "--cache-dir", cache, "--out", tmp_path / "out", "--plain")
    assert again.returncode == 0, again.stderr
    assert "gen | cached" in again.stdout
    assert (tmp_path / "out" / "gen" / "numbers.txt").read_text() == "line 1\nline 2\n"


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache folder on a 1 MiB tmpfs, already holding one entry computed earlier.

    Only root can mount one: the tests using it are marked ``root_only``.
    """
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root; the integration tests run as root in CI")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        seed(tmp_path, mount)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize(
    ("step", "writes"),
    [
        pytest.param("{image: example/flood, params: {lines: 200000}}", "log", id="log-flood"),
        pytest.param("{image: FILLER}", "output", id="big-output"),
    ],
)
@pytest.mark.root_only
def test_a_full_disk_fails_the_step_clearly_and_publishes_nothing(
    kliko: KlikoCli,
    tmp_path: Path,
    tiny_cache: Path,
    images: dict[str, str],
    step: str,
    writes: str,
) -> None:
    """The step's log or its output fills the cache's disk."""
    before = snapshot(tiny_cache)
    chain = tmp_path / "big.yaml"
    chain.write_text(f"steps:\n  big: {step.replace('FILLER', images['filler'])}\n")

    done = kliko("run", chain, "--cache-dir", tiny_cache, "--out", tmp_path / "out", "--plain")

    assert done.returncode == 1, f"{writes}: {done.stdout[-2000:]}{done.stderr}"
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("big | FAILED")]
    assert len(failed) == 1, done.stdout[-2000:]
    assert "No space left on device" in failed[0] or "is full" in failed[0], failed[0]
    assert f"the disk holding the cache folder {tiny_cache} is full" in failed[0], failed[0]
    assert snapshot(tiny_cache) == before, "no partial entry, and the earlier entry is intact"
    assert list((tiny_cache / "tmp").iterdir()) == [], "the staging folder is deleted"
    assert not (tmp_path / "out" / "big").exists()
    verified = kliko("cache", "verify", "--cache-dir", tiny_cache)
    assert verified.returncode == 0, verified.stdout


@pytest.mark.root_only
def test_a_file_parameter_too_big_for_the_cache_disk_is_refused_before_running(
    kliko: KlikoCli, tmp_path: Path, tiny_cache: Path
) -> None:
    """File parameters are copied into the cache when planning (the copy is what is hashed and
    what the container sees), so one that does not fit is refused before any step starts."""
    (tmp_path / "big.txt").write_bytes(b"header line\n" * 200_000)
    before = snapshot(tiny_cache)
    chain = tmp_path / "big.yaml"
    chain.write_text("steps:\n  big: {image: example/gen, params: {header: big.txt}}\n")

    done = kliko("run", chain, "--cache-dir", tiny_cache, "--out", tmp_path / "out", "--plain")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "step 'big' (image example/gen): file parameter 'header'" in done.stderr, done.stderr
    assert "No space left on device" in done.stderr, done.stderr
    assert f"The disk holding {tiny_cache} is full" in done.stderr, done.stderr
    assert "big | started" not in done.stdout
    assert snapshot(tiny_cache) == before, "no partial entry, and the earlier entry is intact"
    assert list((tiny_cache / "tmp").iterdir()) == [], "the copies of file parameters are deleted"
    verified = kliko("cache", "verify", "--cache-dir", tiny_cache)
    assert verified.returncode == 0, verified.stdout


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_file_parameter_in_a_folder_you_may_not_look_into_is_bad_input(
    kliko: KlikoCli,
    tmp_path: Path,
    cache_dir: Path,
    locked: Path,
    as_any_user: list[str],
    dry_run: bool,
) -> None:
    """As kliko-tester, 'header: /root/header.txt' ended in a PermissionError traceback."""
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  gen: {{image: example/gen, params: {{header: {locked}/h}}}}\n")

    done = kliko(
        "run", chain, "--cache-dir", cache_dir, *["--dry-run"] * dry_run, before=as_any_user
    )

    assert_fails_clearly(  # (a long path is cut in the message)
        done, "step 'gen'", "file parameter 'header'", "cannot be read: Permission denied"
    )
    assert done.returncode == 2
