"""Bad input that needs no Docker Engine: the ``kliko-async`` command fails with one readable
message, no traceback, and leaves the cache as it was.

Every case runs the console script as a user would, with ``--cache-dir`` in the test's folder
holding one published entry, whose files must be untouched afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kliko_async.cache.entry import Manifest
from kliko_async.cache.key import KeyIngredients, cache_key
from kliko_async.cache.store import Cache

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
NO_ENGINE = "unix:///nonexistent.sock"


def kliko(
    cwd: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script, run in ``cwd``; the user's own cache is never touched."""
    environment = dict(os.environ, XDG_CACHE_HOME=str(cwd / "xdg-cache"), **(env or {}))
    return subprocess.run(
        [KLIKO_ASYNC, *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def seed_cache(root: Path) -> Cache:
    """A cache folder holding one published entry, as a finished step leaves it."""
    cache = Cache(root)
    cache.ensure_writable()
    ingredients = KeyIngredients(
        image_id="sha256:" + "0" * 64,
        command=("/kliko",),
        io="split",
        parameters={},
        file_hashes={},
        inputs={},
        input_layout="whole",
    )
    key = cache_key(ingredients)
    staging = cache.stage(key)
    (staging.output_dir / "result.txt").write_text("computed for hours\n")
    staging.log_path.write_text("step log\n")
    now = datetime.now(UTC)
    cache.publish(
        staging,
        Manifest(
            key=key,
            step="earlier",
            image="example/gen",
            ingredients=ingredients,
            started_at=now,
            finished_at=now,
            duration_s=3600.0,
            exit_code=0,
        ),
    )
    return cache


def snapshot(cache_root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``entries/`` with its mode, size and modification time."""
    entries = cache_root / "entries"
    found: dict[str, tuple[int, int, int]] = {}
    for path in sorted(entries.rglob("*")):
        info = path.lstat()
        found[path.relative_to(entries).as_posix()] = (
            info.st_mode,
            info.st_size,
            info.st_mtime_ns,
        )
    return found


def assert_fails_clearly(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Non-zero exit, one ``kliko-async: error:`` message holding every ``expected`` part."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip()
    assert message.startswith("kliko-async: error: "), message
    assert message.count("kliko-async: error:") == 1, message
    assert "\n" not in message, f"one paragraph: {message}"
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    return message


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """A seeded cache; the test fails if a bad input changed any of its entries."""
    root = tmp_path / "cache"
    seed_cache(root)
    before = snapshot(root)
    assert before, "the seeded entry is there"
    yield root
    assert snapshot(root) == before, "the cache entries are unchanged"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# -- chain files -------------------------------------------------------------------------------

CHAIN_CASES = [
    pytest.param(
        "steps:\n  gen: {image: example/gen\n  upper: {image: example/upper}\n",
        ["is not valid YAML at line 3, column"],
        id="not-yaml",
    ),
    pytest.param(
        "steps:\n  gen:\n\timage: example/gen\n",
        ["is not valid YAML at line 3, column 1"],
        id="tab-indent",
    ),
    pytest.param("", ["is empty", "'steps'"], id="empty"),
    pytest.param("# nothing but a comment\n", ["is empty"], id="only-comments"),
    pytest.param("- image: example/gen\n", ["the top level is a list"], id="top-level-list"),
    pytest.param("steps: example/gen\n", ["'steps' is a string"], id="steps-is-text"),
    pytest.param("steps: {}\n", ["'steps' is empty"], id="steps-empty"),
    pytest.param(
        "steps:\n  gen: {image: example/gen, params: 5}\n",
        ["step 'gen'", "params", "dictionary"],
        id="params-not-mapping",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen, retries: many}\n",
        ["step 'gen'", "retries", "integer"],
        id="retries-not-int",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen, timeout: -3}\n",
        ["step 'gen'", "timeout", "greater than 0"],
        id="negative-timeout",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen}\n  up: {image: example/upper, inputs: gen}\n",
        ["step 'up'", "inputs", "list"],
        id="inputs-not-list",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen, resources: {memory: lots}}\n",
        ["step 'gen'", "resources.memory", "'lots' is not a size"],
        id="memory-not-size",
    ),
    pytest.param(
        "steps:\n  gen: {image: 5}\n",
        ["step 'gen'", "image", "string"],
        id="image-not-text",
    ),
    pytest.param(
        "stepz:\n  gen: {image: example/gen}\n",
        ["unknown top-level key(s) 'stepz' (did you mean 'steps'?)"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "steps:\n  gen: {imgae: example/gen}\n",
        ["step 'gen'", "unknown key 'imgae' (did you mean 'image'?)"],
        id="unknown-step-key",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen, resources: {cpu: 2}}\n",
        ["step 'gen'", "resources", "unknown key 'cpu' (did you mean 'cpus'?)"],
        id="unknown-resources-key",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen, build: gen/}\n",
        ["step 'gen'", "both 'image' and 'build'"],
        id="image-and-build",
    ),
    pytest.param(
        "steps:\n  gen: {params: {n: 1}}\n",
        ["step 'gen'", "neither 'image' nor 'build'"],
        id="no-image",
    ),
    pytest.param(
        "steps:\n"
        "  a: {image: example/upper, inputs: [c]}\n"
        "  b: {image: example/upper, inputs: [a]}\n"
        "  c: {image: example/upper, inputs: [b]}\n",
        ["cycle: a -> b -> c -> a"],
        id="cycle",
    ),
    pytest.param(
        "steps:\n  a: {image: example/upper, inputs: [a]}\n",
        ["step 'a' lists itself as an input"],
        id="self-input",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen}\n  up: {image: example/upper, inputs: [gne]}\n",
        ["step 'up' has input 'gne', but there is no such step (did you mean 'gen'?)"],
        id="unknown-input",
    ),
    pytest.param(
        "steps:\n  gen: {image: example/gen}\n  gen: {image: example/upper}\n",
        ["key 'gen' appears twice", "line 2, column 3", "line 3, column 3"],
        id="duplicate-step",
    ),
    pytest.param(
        "steps:\n  - {name: gen, image: example/gen}\n  - {name: gen, image: example/upper}\n",
        ["step #2 'gen': name 'gen' is already used by step #1 'gen'"],
        id="duplicate-name-in-list",
    ),
    pytest.param(
        "steps:\n  ../x: {image: example/gen}\n",
        ["step name '../x' is not safe as a folder name"],
        id="name-dotdot",
    ),
    pytest.param(
        "steps:\n  a/b: {image: example/gen}\n",
        ["step name 'a/b' is not safe as a folder name"],
        id="name-slash",
    ),
    pytest.param("steps:\n  '': {image: example/gen}\n", ["a step name is empty"], id="name-empty"),
    pytest.param(
        "steps:\n  '..': {image: example/gen}\n",
        ["step name '..' is not safe as a folder name"],
        id="name-is-dotdot",
    ),
    pytest.param(
        "steps:\n  - {name: /etc, image: example/gen}\n",
        ["step name '/etc' is not safe as a folder name"],
        id="list-name-absolute",
    ),
    pytest.param(
        "steps:\n  7: {image: example/gen}\n",
        ["step name 7 is a number, not text"],
        id="name-not-text",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CHAIN_CASES)
def test_a_bad_chain_file_is_refused_before_anything_runs(
    tmp_path: Path, cache_dir: Path, text: str, expected: list[str]
) -> None:
    chain = write(tmp_path, "chain.yaml", text)

    done = kliko(tmp_path, "run", chain, "--cache-dir", cache_dir, "--out", tmp_path / "out")

    assert_fails_clearly(done, "chain.yaml", *expected)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "x").exists(), "'../x' never became a folder"


def test_dry_run_refuses_a_bad_chain_file_the_same_way(tmp_path: Path, cache_dir: Path) -> None:
    chain = write(tmp_path, "chain.yaml", "steps:\n  a/b: {image: example/gen}\n")

    done = kliko(tmp_path, "run", chain, "--cache-dir", cache_dir, "--dry-run")

    assert_fails_clearly(done, "chain.yaml", "step name 'a/b' is not safe")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda d: d / "missing.yaml", ["chain file not found"], id="missing"),
        pytest.param(lambda d: d, ["is a folder, not a chain file"], id="folder"),
        pytest.param(
            lambda d: write(d, "latin1.yaml", "steps:\n  g\xe9n: {image: x}\n".encode("latin-1")),
            ["is not UTF-8 text (byte 0xe9"],
            id="not-utf8",
        ),
    ],
)
def test_a_chain_file_that_cannot_be_read_is_named(
    tmp_path: Path, cache_dir: Path, make: Callable[[Path], Path], expected: list[str]
) -> None:
    folder = tmp_path / "chains"
    folder.mkdir()
    chain = make(folder)

    done = kliko(tmp_path, "run", chain, "--cache-dir", cache_dir)

    assert_fails_clearly(done, str(chain), *expected)


# -- kliko.yml files -------------------------------------------------------------------------

KLIKO_YML_CASES = [
    pytest.param(
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: n, type: integre}\n",
        ["sections[0].fields[0] ('n')", "type 'integre' is not a Kliko type"],
        id="unknown-type",
    ),
    pytest.param(
        "schema_version: 3\nio: both\nsections: []\n",
        ["io must be 'split' or 'join', not a string 'both'"],
        id="bad-io",
    ),
    pytest.param(
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: mode, type: choice, choices: {fast: F, slow: S}, initial: medium}\n",
        ["sections[0].fields[0] ('mode')", "'medium' is not one of the choices fast, slow"],
        id="choice-default-not-a-choice",
    ),
    pytest.param(
        "schema_version: 3\nio: split\n", ["missing required key 'sections'"], id="no-sections"
    ),
    pytest.param(
        "schema_version: 3\nio: split\nsections: [\n", ["is not valid YAML at line"], id="not-yaml"
    ),
    pytest.param("", ["is empty"], id="empty"),
    pytest.param(
        "schema_version: 9\nio: split\nsections: []\n",
        ["schema_version must be 2, 3 or 4, not an integer 9"],
        id="unknown-schema-version",
    ),
    pytest.param(
        "schema_version: 3\nio: split\nsections: []\ncolour: blue\n",
        ["unknown key 'colour'"],
        id="unknown-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), KLIKO_YML_CASES)
def test_validate_a_bad_kliko_yml_file_names_the_file_and_field(
    tmp_path: Path, cache_dir: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, "kliko.yml", text)

    done = kliko(tmp_path, "validate", path, "--cache-dir", cache_dir)

    assert_fails_clearly(done, str(path), *expected)


def test_validate_a_missing_kliko_yml_path_says_so(tmp_path: Path, cache_dir: Path) -> None:
    """A path that is clearly a file is not looked up as an image tag."""
    done = kliko(tmp_path, "validate", "./nowhere/kliko.yml", "--cache-dir", cache_dir)

    assert_fails_clearly(done, "nowhere/kliko.yml", "does not exist")


# -- no Docker Engine ------------------------------------------------------------------------

GOOD_CHAIN = "steps:\n  gen: {image: example/gen}\n  upper: {image: example/upper, inputs: [gen]}\n"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["run", "chain.yaml"], id="run"),
        pytest.param(["run", "chain.yaml", "--dry-run"], id="dry-run"),
        pytest.param(["validate", "example/gen"], id="validate-image"),
        pytest.param(["logs", "chain.yaml", "gen"], id="logs"),
    ],
)
def test_no_docker_engine_says_so_and_how_to_fix_it(
    tmp_path: Path, cache_dir: Path, command: list[str]
) -> None:
    write(tmp_path, "chain.yaml", GOOD_CHAIN)

    done = kliko(tmp_path, *command, "--cache-dir", cache_dir, env={"DOCKER_HOST": NO_ENGINE})

    message = assert_fails_clearly(
        done, f"no Docker Engine answers at {NO_ENGINE}", "Start a Docker Engine", "DOCKER_HOST"
    )
    assert message.count("no Docker Engine") == 1, "said once, not once per step"


def test_run_image_without_docker_engine_says_so(tmp_path: Path, cache_dir: Path) -> None:
    done = kliko(
        tmp_path,
        "run-image",
        "example/gen",
        "--cache-dir",
        cache_dir,
        env={"DOCKER_HOST": NO_ENGINE},
    )

    assert_fails_clearly(done, f"no Docker Engine answers at {NO_ENGINE}", "DOCKER_HOST")


# -- a cache folder that cannot be written ---------------------------------------------------


def test_a_cache_folder_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "chain.yaml", GOOD_CHAIN)
    blocker = write(tmp_path, "not-a-folder", "a file where a folder should be\n")

    done = kliko(tmp_path, "run", "chain.yaml", "--cache-dir", blocker / "cache")

    assert_fails_clearly(done, "not-a-folder/cache", "is not writable", "Not a directory")
    assert done.returncode == 2, "a setting that cannot be used, said before the run"
    assert blocker.read_text() == "a file where a folder should be\n"


@pytest.fixture
def read_only_cache(tmp_path: Path, cache_dir: Path) -> Iterator[Path]:
    """The seeded cache, seen through a read-only bind mount (or made read-only if not root)."""
    view = tmp_path / "read-only-cache"
    view.mkdir()
    if os.geteuid() != 0:  # chmod binds for everyone but root
        folders = [cache_dir, *(p for p in cache_dir.rglob("*") if p.is_dir())]
        modes = {p: p.stat().st_mode for p in folders}
        for folder in folders:
            folder.chmod(0o555)
        try:
            yield cache_dir
        finally:
            for folder, mode in modes.items():
                folder.chmod(mode)
        return
    subprocess.run(["mount", "--bind", str(cache_dir), str(view)], check=True)
    try:
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True
        )
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_cache_folder_is_refused(tmp_path: Path, read_only_cache: Path) -> None:
    write(tmp_path, "chain.yaml", GOOD_CHAIN)

    done = kliko(tmp_path, "run", "chain.yaml", "--cache-dir", read_only_cache)

    assert_fails_clearly(done, str(read_only_cache), "is not writable")
    assert done.returncode == 2, "a setting that cannot be used, said before the run"
    assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr


# -- an output folder that cannot be one --------------------------------------------------------


@pytest.mark.parametrize("out", ["results", "results/run-1"])
def test_an_out_folder_that_is_a_file_is_refused_before_running(
    tmp_path: Path, cache_dir: Path, out: str
) -> None:
    write(tmp_path, "chain.yaml", GOOD_CHAIN)
    write(tmp_path, "results", "not a folder\n")

    done = kliko(tmp_path, "run", "chain.yaml", "--cache-dir", cache_dir, "--out", out)

    assert_fails_clearly(done, f"--out {out}", "results is not a folder")
    assert done.returncode == 2, "a setting that cannot be used, said before the run"
    assert (tmp_path / "results").read_text() == "not a folder\n"


def test_an_out_folder_that_cannot_be_written_is_refused_before_running(
    tmp_path: Path, cache_dir: Path, read_only_folder: Path
) -> None:
    """As kliko-tester, '--out /work/main/out' (root's folder) ran the chain and then failed
    its export with exit status 1; a setting that cannot be used is said before the run."""
    write(tmp_path, "chain.yaml", GOOD_CHAIN)
    out = read_only_folder / "results"

    done = kliko(
        tmp_path,
        "run",
        "chain.yaml",
        "--cache-dir",
        cache_dir,
        "--out",
        out,
        env={"DOCKER_HOST": NO_ENGINE},  # refused before the engine is asked anything
    )

    assert_fails_clearly(done, f"--out {out}", f"{read_only_folder} is not writable")
    assert done.returncode == 2, "a setting that cannot be used, said before the run"
    assert not out.exists()


def test_an_out_folder_that_cannot_be_looked_at_is_refused_without_a_traceback(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A part of the path the system cannot look up (a name too long here; a folder the user
    may not search, such as /root/x as kliko-tester) ended in 'OSError: [Errno 36] ...'."""
    write(tmp_path, "chain.yaml", GOOD_CHAIN)
    out = "x" * 300 + "/results"

    done = kliko(tmp_path, "run", "chain.yaml", "--cache-dir", cache_dir, "--out", out)

    assert_fails_clearly(done, "--out x", "cannot look at x", "File name too long")
    assert done.returncode == 2, "a setting that cannot be used, said before the run"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["cache", "ls", "--cache-dir", "{locked}"], "--cache-dir {locked}: cannot be read"),
        (["logs", "--key", "00", "--cache-dir", "{locked}"], "--cache-dir {locked}: cannot be"),
        (["cache", "ls", "--cache-dir", "{locked}/c"], "--cache-dir {locked}/c: cannot look at"),
        (["run", "chain.yaml", "--report", "{locked}/r.html"], "--report {locked}/r.html: cannot"),
        (["report", "-o", "{locked}/r.html"], "-o {locked}/r.html: cannot look at it"),
        (["provenance", "{locked}/gen"], "{locked}/gen: cannot look at it: Permission denied"),
    ],
    ids=["cache-ls", "logs", "cache-inside", "run-report", "report", "provenance"],
)
def test_a_folder_you_may_not_read_is_refused_in_one_line(
    tmp_path: Path, locked: Path, as_any_user: list[str], args: list[str], said: str
) -> None:
    """As kliko-tester: 'cache ls --cache-dir /root/.cache/kliko-async', 'logs --key 00
    --cache-dir /root' and 'run chain.yaml --report /root/r.html' ended in a PermissionError
    traceback ('provenance /root/out/gen' too); 'report -o /root/r.html' made the report and
    then failed, exit 1."""
    write(tmp_path, "chain.yaml", GOOD_CHAIN)
    environment = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    command = [*as_any_user, KLIKO_ASYNC, *(a.format(locked=locked) for a in args)]

    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )

    assert_fails_clearly(done, said.format(locked=locked))
    assert done.returncode == 2


@pytest.mark.parametrize(
    ("chain", "env", "args", "said"),
    [
        (GOOD_CHAIN, {"XDG_CACHE_HOME": "{locked}"}, ["cache", "ls"], "cache folder {locked}/"),
        (GOOD_CHAIN, {"KLIKO_ASYNC_CONFIG": "{locked}/c.yaml"}, ["run", "chain.yaml"], "c.yaml"),
        (GOOD_CHAIN, {"XDG_CONFIG_HOME": "{locked}"}, ["why", "chain.yaml"], "config.yaml"),
        ("steps:\n  b: {build: LOCKED/b}\n", {}, ["run", "chain.yaml", "--dry-run"], "/b'"),
    ],
    ids=["default-cache", "config-file", "config-home", "build-folder"],
)
def test_a_setting_or_chain_naming_what_you_may_not_look_into_is_one_line(
    tmp_path: Path,
    locked: Path,
    as_any_user: list[str],
    chain: str,
    env: dict[str, str],
    args: list[str],
    said: str,
) -> None:
    """As kliko-tester, with XDG_CACHE_HOME, KLIKO_ASYNC_CONFIG or XDG_CONFIG_HOME in a folder
    you may not look into (another user's home), or a build: folder there, every command
    ended in a PermissionError traceback."""
    write(tmp_path, "chain.yaml", chain.replace("LOCKED", str(locked)))
    environment = {"XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "DOCKER_HOST": NO_ENGINE}
    environment |= {name: value.format(locked=locked) for name, value in env.items()}

    done = subprocess.run(
        [*as_any_user, KLIKO_ASYNC, *args],
        cwd=tmp_path,
        env=dict(os.environ, **environment),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert_fails_clearly(done, said.format(locked=locked), "Permission denied")
    assert done.returncode == 2


DIAMOND = (
    "steps:\n  gen: {image: example/gen}\n  upper: {image: example/upper, inputs: [gen]}\n"
    "  lower: {image: example/lower, inputs: [gen]}\n"
    "  merge: {image: example/merge, inputs: [upper, lower]}\n"
)


@pytest.mark.parametrize(
    "args",
    [["--force", "upper", "lower"], ["lower", "--force", "upper"]],
    ids=["several-after-one-force", "target-and-force"],
)
def test_a_forced_step_the_targets_leave_out_is_said_so(
    tmp_path: Path, cache_dir: Path, args: list[str]
) -> None:
    """'run chain.yaml --force upper lower' (usage.md's synopsis read '[--force STEP ...]')
    made lower a target step, then said '--force names unknown step(s): upper. Steps are:
    gen, lower', of a step the chain has."""
    write(tmp_path, "chain.yaml", DIAMOND)

    done = kliko(tmp_path, "run", "chain.yaml", *args, "--cache-dir", cache_dir)

    message = assert_fails_clearly(
        done, "chain.yaml: --force upper: not among the target steps (lower)", "--force lower"
    )
    assert "unknown" not in message
    assert done.returncode == 2


def test_an_unknown_step_to_force_is_said_of_the_whole_chain(
    tmp_path: Path, cache_dir: Path
) -> None:
    write(tmp_path, "chain.yaml", DIAMOND)

    done = kliko(
        tmp_path, "run", "chain.yaml", "lower", "--force", "uper", "--cache-dir", cache_dir
    )

    assert_fails_clearly(done, "no step to force (--force) named 'uper'", "did you mean 'upper'")
    assert done.returncode == 2


# -- command-line options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["cache", "gc", "--max-size", "10Q"], ["'10Q' is not a size"], id="size"),
        pytest.param(["cache", "gc", "--older-than", "30"], ["'30' is not an age"], id="age"),
        pytest.param(["cache", "gc"], ["--older-than", "--max-size"], id="gc-without-limit"),
        pytest.param(["logs"], ["logs needs CHAIN STEP, or --key KEY"], id="logs-no-args"),
        pytest.param(["logs", "--key", "ffff"], ["no entry with a key starting 'ffff'"], id="key"),
    ],
)
def test_bad_options_are_one_readable_error(
    tmp_path: Path, cache_dir: Path, args: list[str], expected: list[str]
) -> None:
    done = kliko(tmp_path, *args, "--cache-dir", cache_dir)

    assert_fails_clearly(done, *expected)


def test_jobs_must_be_positive(tmp_path: Path, cache_dir: Path) -> None:
    write(tmp_path, "chain.yaml", GOOD_CHAIN)

    done = kliko(tmp_path, "run", "chain.yaml", "--cache-dir", cache_dir, "--jobs", "0")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "argument -j/--jobs: must be at least 1" in done.stderr


def test_an_error_wrapped_in_a_task_group_exits_with_its_own_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step's exit code 0 inside a StepFailure is not the command's exit status."""
    from kliko_async import cli
    from kliko_async.errors import Interrupted, StepFailure

    for error, status in ((StepFailure("s", "timed out", exit_code=0), 1), (Interrupted("x"), 130)):

        def dispatch(args: list[str], error: BaseException = error) -> int:
            raise BaseExceptionGroup("run", [BaseExceptionGroup("inner", [error])])

        monkeypatch.setattr(cli, "_dispatch", dispatch)
        with pytest.raises(SystemExit) as exited:
            cli.main(["run", "chain.yaml"])
        assert exited.value.code == status
        assert f"kliko-async: error: {error}" in capsys.readouterr().err
