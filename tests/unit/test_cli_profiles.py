"""Every command reads the cache a profile names, as ``run`` does; step names may come after
options. Through the console script, with no Docker Engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kliko_async.cliargs import parse_command_line

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")


def kliko(cwd: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        XDG_CACHE_HOME=str(cwd / "xdg-cache"),
        KLIKO_ASYNC_CONFIG=str(cwd / "config.yaml"),
        DOCKER_HOST="unix:///nonexistent/docker.sock",
    )
    return subprocess.run(
        [KLIKO_ASYNC, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def profiled(tmp_path: Path) -> Path:
    """A config file whose default profile names a cache folder holding one entry."""
    from test_cli_errors import seed_cache

    seed_cache(tmp_path / "profile-cache")
    (tmp_path / "config.yaml").write_text(
        "default: mine\n"
        "profiles:\n"
        f"  mine: {{cache_dir: {tmp_path / 'profile-cache'}}}\n"
        f"  empty: {{cache_dir: {tmp_path / 'empty-cache'}}}\n"
    )
    return tmp_path


def test_cache_commands_read_the_default_profiles_cache(profiled: Path) -> None:
    listed = kliko(profiled, "cache", "ls")
    assert listed.returncode == 0, listed.stderr
    assert "1 entries" in listed.stdout or "1 entry" in listed.stdout

    other = kliko(profiled, "cache", "ls", "--profile", "empty")
    assert other.returncode == 0, other.stderr
    assert "0 entries" in other.stdout

    given = kliko(profiled, "cache", "ls", "--cache-dir", profiled / "empty-cache")
    assert "0 entries" in given.stdout, "--cache-dir wins over the profile"


def test_logs_by_key_reads_the_default_profiles_cache(profiled: Path) -> None:
    key = next((profiled / "profile-cache" / "entries").rglob("manifest.json")).parent.name

    done = kliko(profiled, "logs", "--key", key[:12])

    assert done.returncode == 0, done.stderr
    assert "step log" in done.stdout


def test_an_unknown_profile_is_bad_input_for_every_command(profiled: Path) -> None:
    for command in (["cache", "ls"], ["run", "chain.yaml", "--dry-run"]):
        done = kliko(profiled, *command, "--profile", "nope")
        assert done.returncode == 2, done.stderr
        assert "no profile 'nope' (profiles: empty, mine)" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "field", "steps"),
    [
        (["run", "c.yaml", "--cache-dir", "c", "--dry-run", "merge"], "targets", ["merge"]),
        (["run", "c.yaml", "a", "-j", "2", "b", "--plain"], "targets", ["a", "b"]),
        (["why", "c.yaml", "--cache-dir", "c", "merge", "--json"], "steps", ["merge"]),
        (["graph", "c.yaml", "--format", "dot", "lower"], "targets", ["lower"]),
        (["logs", "c.yaml", "--cache-dir", "c", "lower"], "step", "lower"),
    ],
)
def test_step_names_may_come_after_options(args: list[str], field: str, steps: object) -> None:
    options = parse_command_line(args)

    assert options.command == args[0]
    assert getattr(options, field) == steps
    assert options.chain == Path("c.yaml")


def test_an_unknown_option_among_step_names_is_still_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_command_line(["run", "c.yaml", "merge", "--bogus"])

    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["cache", "ls", "extra"], ["cache", "gc", "extra", "--older-than", "1d"]]
)
def test_a_cache_action_given_a_positional_is_the_usual_error(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_command_line(args)

    assert exited.value.code == 2
    assert "unrecognized arguments: extra" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "gc", "--max-size", "0", "--cache-dir", "/dev/null"],
        ["cache", "ls", "--cache-dir", "/dev/null"],
        ["cache", "verify", "--cache-dir", "/dev/null"],
        ["report", "--cache-dir", "/dev/null"],
        ["report", "nosuchrun"],
        ["provenance", "/nonexistent"],
        ["provenance", "."],
        ["logs", "--key", "ffff"],
        ["run", "c.yaml", "--report", "/dev/null/report.html"],
        ["run", "c.yaml", "--report", "."],
    ],
    ids=lambda args: " ".join(args),
)
def test_arguments_that_cannot_be_used_exit_2_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """Each was exit status 1 (or, for gc of a file, a traceback), as if a run had failed; a
    cache folder that is a file read as an empty cache. The run is refused before it runs."""
    (tmp_path / "c.yaml").write_text("steps:\n  a: {image: example/gen}\n")

    done = kliko(tmp_path, *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("kliko-async: error: ") and done.stderr.count("\n") == 1
    assert "no Docker Engine" not in done.stderr, "said before the engine is asked"
