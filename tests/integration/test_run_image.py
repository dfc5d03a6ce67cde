"""``kliko-async run-image``: one Kliko image, its parameters as flags, like Kliko's kliko-run."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Users = Callable[[subprocess.Popen[bytes], Path], list[str]]

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]


def test_split_io_writes_the_output_folder_and_shows_the_logs(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", "--n", "3", "--prefix", "x", "--output", out)

    assert done.returncode == 0, done.stderr
    assert (out / "numbers.txt").read_text() == "x 1\nx 2\nx 3\n"
    assert "gen: writing 3 lines" in done.stdout, "the container's stdout goes to stdout"
    assert "gen: done" in done.stderr, "the container's stderr goes to stderr"


def test_help_after_the_image_lists_its_parameters(kliko: KlikoCli) -> None:
    done = kliko("run-image", "example/gen", "--help")

    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for flag in ("--n INT", "--scale FLOAT", "--prefix STR", "--header FILE", "--output"):
        assert flag in text
    assert "how many lines to write; default: 5" in text
    assert "Writes numbered lines" in text, "the image's description"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--n", "abc", ["--n", "'abc' is not an integer"]),
        ("--scale", "fast", ["--scale", "'fast' is not a number"]),
        ("--prefix", "x" * 40, ["'prefix'", "40 characters long; the limit is 32"]),
    ],
)
def test_a_bad_parameter_value_is_refused_before_any_container_runs(
    kliko: KlikoCli, tmp_path: Path, flag: str, value: str, expected: list[str]
) -> None:
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", flag, value, "--output", out)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    for part in expected:
        assert part in done.stderr
    assert not (out / "numbers.txt").exists()
    assert "gen:" not in done.stdout, "the container must not have run"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("kliko-async/busybox", "has no /kliko.yml, so it is not a Kliko image"),
        ("example/does-not-exist", "not present on this engine and could not be pulled"),
    ],
)
def test_an_image_that_cannot_be_run_is_a_clear_error(
    kliko: KlikoCli, tmp_path: Path, image: str, expected: str
) -> None:
    done = kliko("run-image", image, "--output", tmp_path / "out")

    assert done.returncode != 0
    assert image in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_parameters_from_a_file_are_overridden_by_flags(kliko: KlikoCli, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"n": 4, "scale": 2.5, "prefix": "from-file"}))
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", "--params", params, "--n", "2", "--output", out)

    assert done.returncode == 0, done.stderr
    assert (out / "numbers.txt").read_text() == "from-file 2.5\nfrom-file 5\n"


def test_a_file_parameter_is_copied_into_the_container(kliko: KlikoCli, tmp_path: Path) -> None:
    header = tmp_path / "header.txt"
    header.write_text("# run 42, calibrated\n")
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", "--n", "1", "--header", header, "--output", out)

    assert done.returncode == 0, done.stderr
    assert (out / "numbers.txt").read_text() == "# run 42, calibrated\nline 1\n"


def test_an_input_folder_is_mounted_at_input(kliko: KlikoCli, tmp_path: Path) -> None:
    given = tmp_path / "in"
    (given / "sub").mkdir(parents=True)
    (given / "a.txt").write_text("hello\n")
    (given / "sub" / "b.txt").write_text("Nested World\n")
    out = tmp_path / "out"

    done = kliko("run-image", "example/upper", "--input", given, "--suffix", ".up", "--output", out)

    assert done.returncode == 0, done.stderr
    assert (out / "a.txt.up").read_text() == "HELLO\n"
    assert (out / "sub" / "b.txt.up").read_text() == "NESTED WORLD\n"
    assert (given / "a.txt").read_text() == "hello\n", "the input is never changed"


def test_join_io_works_in_place_in_the_work_folder(kliko: KlikoCli, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "1.txt").write_text("one\n")
    (work / "2.txt").write_text("two\n")

    done = kliko("run-image", "example/merge", "--work", work)

    assert done.returncode == 0, done.stderr
    assert (work / "merged.txt").read_text() == "one\n----\ntwo\n----\n"
    assert "merge: ./1.txt" in done.stdout


def test_a_failing_container_gives_its_exit_status_and_message(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    done = kliko(
        "run-image",
        "example/fail",
        "--code",
        "7",
        "--message",
        "detector offline",
        "--output",
        tmp_path / "out",
    )

    assert done.returncode == 7
    assert "detector offline" in done.stderr
    assert "Traceback" not in done.stderr


def owner_of(tree: Path) -> set[int]:
    return {path.stat().st_uid for path in tree.rglob("*")}


def test_outputs_belong_to_the_invoking_user(kliko: KlikoCli, tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", "--n", "2", "--output", out)

    assert done.returncode == 0, done.stderr
    assert owner_of(out) == {os.getuid()}


@pytest.mark.parametrize("user", ["nobody", "root; rm -rf /", "1000:"])
def test_a_user_that_is_not_numeric_is_refused_before_a_container_starts(
    kliko: KlikoCli, tmp_path: Path, user: str
) -> None:
    out = tmp_path / "out"

    done = kliko("run-image", "example/gen", "--user", user, "--output", out)

    assert done.returncode == 2, done.stderr
    assert f"--user {user}: " in done.stderr and "is not a numeric uid or uid:gid" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists(), "refused before anything was made"


def test_the_container_runs_as_the_invoking_uid_and_gid(
    kliko: KlikoCli, tmp_path: Path, container_users: Users
) -> None:
    """Checked on the container itself: when the tests run as root, file owners cannot tell."""
    process = kliko.popen(
        "run-image",
        "example/sleep",
        "--seconds",
        "3",
        "--output",
        tmp_path / "out",
        log=tmp_path / "log.txt",
    )

    users = container_users(process, tmp_path / "log.txt")
    assert users == [f"{os.getuid()}:{os.getgid()}"]


def test_user_flag_runs_the_container_as_another_uid(
    kliko: KlikoCli, tmp_path: Path, container_users: Users
) -> None:
    out = tmp_path / "out"
    process = kliko.popen(
        "run-image",
        "example/sleep",
        "--seconds",
        "3",
        "--user",
        "1234:1234",
        "--output",
        out,
        log=tmp_path / "log.txt",
    )

    assert container_users(process, tmp_path / "log.txt") == ["1234:1234"]
    slept = out / "slept.txt"
    # Root may leave the files to uid 1234; anyone else could not even delete them, so the
    # engine gives them back to the invoking user once the container has ended.
    owner = (1234, 1234) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    assert (slept.stat().st_uid, slept.stat().st_gid) == owner
    assert slept.read_text().startswith("slept 3")
    slept.unlink()


def test_cache_dir_keeps_the_image_spec_out_of_the_users_cache(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """Like ``validate`` and ``run``, run-image takes ``--cache-dir`` for the kliko.yml it reads."""
    cache = tmp_path / "cache"

    done = kliko("run-image", "example/gen", "--cache-dir", cache, "--output", tmp_path / "out")

    assert done.returncode == 0, done.stderr
    assert list((cache / "specs").glob("*.kliko.yml")), "the image's kliko.yml is kept here"
    default_cache = Path(kliko.env["XDG_CACHE_HOME"]) / "kliko-async"
    assert not default_cache.exists(), "nothing is written to the default cache"


@pytest.mark.parametrize(
    ("image", "flag"), [("example/gen", "--output"), ("example/merge", "--work")]
)
@pytest.mark.parametrize(
    ("folder", "said"),
    [
        ("a-file", "a-file is not a folder"),
        ("a-file/under", "a-file is not a folder"),
        # root may write in /proc's folder, but not make one there; nobody else may write
        ("/proc/x", "cannot create the folder" if os.geteuid() == 0 else "/proc is not writable"),
        # a traceback (OSError: [Errno 36]) as any user, as /root/out was as kliko-tester
        ("x" * 300 + "/out", "cannot look at xxx"),
    ],
)
def test_a_folder_flag_that_cannot_be_a_folder_is_a_clear_error(
    kliko: KlikoCli, tmp_path: Path, image: str, flag: str, folder: str, said: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")

    done = kliko("run-image", image, flag, folder)

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"kliko-async: error: {flag} {folder}: {said}"), done.stderr
    assert done.stderr.count("\n") == 1, "one line"
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


def test_a_folder_flag_naming_a_folder_nobody_may_write_is_refused_before_the_container(
    kliko: KlikoCli, read_only_folder: Path
) -> None:
    """As kliko-tester, 'run-image example/gen --output /work/main' (root's folder) started
    the container, which failed with "can't create /output/numbers.txt: Permission denied"."""
    done = kliko("run-image", "example/gen", "--output", read_only_folder)

    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"kliko-async: error: --output {read_only_folder}: {read_only_folder} is not writable "
        f"({'read-only file system' if os.geteuid() == 0 else 'permission denied'}), so the "
        "container's files cannot be written there. Give --output a folder you can write (it "
        "is created if missing).\n"
    )
    assert "gen: writing" not in done.stdout + done.stderr, "no container ran"


@pytest.fixture
def merge_as_in_this_checkout(tmp_path: Path) -> Iterator[str]:
    """example/merge built from this checkout's examples/images under a tag of its own, so that
    the shared example/merge of another test run on the engine is left as it is."""
    tag = f"kliko-async-test/merge-{uuid.uuid4().hex[:10]}"
    images = Path(__file__).resolve().parents[2] / "examples" / "images"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-f", images / "merge" / "Dockerfile", images],
        capture_output=True,
        check=True,
    )
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_the_join_io_example_of_the_usage_page_works_on_a_new_work_folder(
    kliko: KlikoCli, tmp_path: Path, merge_as_in_this_checkout: str
) -> None:
    """docs/usage.md's 'kliko-async run-image example/merge --work work/', run as written
    (work/ new, or empty), failed: "mv: can't rename 'merged.txt.part': No such file or
    directory", exit status 1."""
    done = kliko("run-image", merge_as_in_this_checkout, "--work", "work/")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "work" / "merged.txt").read_text() == ""


def test_an_input_folder_you_may_not_look_into_is_one_line(
    kliko: KlikoCli, tmp_path: Path, locked: Path, as_any_user: list[str]
) -> None:
    """As kliko-tester, 'run-image example/upper --input /root/in' ended in a PermissionError
    traceback."""
    given = locked / "in"

    done = kliko(
        "run-image", "example/upper", "--input", given, "--output", tmp_path / "out",
        before=as_any_user,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"kliko-async: error: --input {given}: cannot look at it: Permission denied\n"
    )
