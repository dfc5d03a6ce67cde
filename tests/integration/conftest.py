"""Integration tests run real containers on a real Docker Engine.

With ``CI=true`` a missing engine is a failure, never a skip (``.ci/run`` starts one with
scripts/ensure-docker). The example images are built once per session by scripts/build-images.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANAGED = "label=io.kliko-async.managed=1"
OWNER = "io.kliko-async.owner"


def _engine_answers() -> bool:
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if os.environ.get("KLIKO_TEST_UNPRIVILEGED") and os.geteuid() == 0:
        pytest.fail("scripts/test-as-user must run the tests as a user who is not root")
    if not _engine_answers():
        message = "no Docker Engine answers; run scripts/ensure-docker"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def example_images(docker_engine: None) -> None:
    """Build kliko-async/busybox and example/* once per session."""
    subprocess.run([str(ROOT / "scripts" / "build-images")], check=True, capture_output=True)


def managed_containers() -> list[str]:
    """IDs of every container kliko-async started that still exists."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", MANAGED], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


_CHILDREN: set[int] = set()
"""The pid of every process this test session started (kliko-async, among others)."""


@pytest.fixture(scope="session", autouse=True)
def record_children() -> Iterator[None]:
    """Note the pid of every process started through ``subprocess``, for :func:`left_behind`."""
    original = subprocess.Popen.__init__

    def recording(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _CHILDREN.add(self.pid)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", recording)
        yield


def left_behind() -> list[str]:
    """Managed containers of this test session that nobody alive is responsible for.

    The engine may be shared (other test runs, benchmarks, other helpers' kill -9 tests): only
    containers whose owner label names this process or a process it started count, once that
    process has ended (this process's are judged as if it had ended). A container without an
    owner counts only if it stays for a second.
    """
    host, me = socket.gethostname(), os.getpid()

    def suspects() -> dict[str, str]:
        ids = managed_containers()
        if not ids:
            return {}
        done = subprocess.run(
            [
                "docker",
                "inspect",
                "--format",
                '{{.Id}} {{index .Config.Labels "io.kliko-async.owner"}}',
                *ids,
            ],
            capture_output=True,
            text=True,
        )  # a container may vanish meanwhile: then inspect fails for it alone
        found = {}
        for line in done.stdout.splitlines():
            cid, _, owner = line.partition(" ")
            owner = "" if owner.strip() == "<no value>" else owner.strip()
            owner_host, _, pid = owner.rpartition(":")
            ours = owner_host == host and pid.isdigit() and int(pid) in _CHILDREN | {me}
            if not owner or (ours and not _alive(int(pid), me)):
                found[cid[:12]] = owner
        return found

    first = suspects()
    if any(not owner for owner in first.values()):
        time.sleep(1)
        again = suspects()
        first = {cid: owner for cid, owner in first.items() if cid in again}
    return sorted(first)


def _alive(pid: int, me: int) -> bool:
    if pid == me:
        return False  # this process's containers are judged as if it had ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every integration test, no kliko-async container of this test may remain."""
    yield
    if "docker_engine" in request.fixturenames and _engine_answers():
        assert left_behind() == [], "a kliko-async container was left behind"


KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
"""The console script of the virtualenv running the tests."""


PEAK_LAUNCHER = Path(__file__).resolve().parents[2] / "benchmarks" / "peak.py"
"""``python PEAK_LAUNCHER FILE COMMAND...`` runs COMMAND and writes its peak memory (KiB) to
FILE."""


class KlikoCli:
    """Runs the ``kliko-async`` command as a user would, in a test's own folder.

    ``XDG_CACHE_HOME`` points into the test's folder, so nothing ever touches the user's cache,
    even for a command that has no ``--cache-dir``.
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "xdg-cache"))

    def __call__(
        self, *args: str | os.PathLike[str], timeout: float = 120, before: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``before``: a command that runs it (``setpriv ...``: see ``as_any_user``)."""
        return subprocess.run(
            [*before, KLIKO_ASYNC, *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def raw(
        self, *args: str | os.PathLike[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        """As calling it, but stdout and stderr are the bytes written, not decoded."""
        return subprocess.run(
            [KLIKO_ASYNC, *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )

    def measured(
        self, *args: str | os.PathLike[str], timeout: float = 300
    ) -> tuple[subprocess.CompletedProcess[bytes], int]:
        """As ``raw``, and the command's peak memory in bytes.

        Measured by a small launcher of its own: a child of pytest would inherit pytest's
        memory high-water mark (Linux keeps it across fork and exec), which grows to 150 MB and
        more over the suite."""
        with tempfile.NamedTemporaryFile("r") as peak:
            done = subprocess.run(
                [sys.executable, str(PEAK_LAUNCHER), peak.name, KLIKO_ASYNC, *map(str, args)],
                cwd=self.cwd, env=self.env, capture_output=True, timeout=timeout,
            )  # fmt: skip
            return done, int(peak.read()) * 1024  # ru_maxrss is in KiB

    def popen(self, *args: str | os.PathLike[str], log: Path) -> subprocess.Popen[bytes]:
        """Start the command in the background, its stdout and stderr going to ``log``."""
        with log.open("wb") as sink:
            return subprocess.Popen(
                [KLIKO_ASYNC, *map(str, args)],
                cwd=self.cwd,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
def kliko(tmp_path: Path) -> KlikoCli:
    """``kliko("run", chain, ...)``: the kliko-async command, run in ``tmp_path``."""
    return KlikoCli(tmp_path)


def created_containers(
    since: float, until: float, *, owner_pid: int | None = None
) -> list[dict[str, str]]:
    """Labels (and image, name) of every kliko-async container created between two times.

    Containers are removed after use, so ``docker ps -a`` cannot tell whether one existed;
    the engine's event log can. With ``owner_pid``, only those of that kliko-async process
    (on this host), so other runs on a shared engine do not count.
    """
    owner = (
        []
        if owner_pid is None
        else ["--filter", f"label={OWNER}={socket.gethostname()}:{owner_pid}"]
    )
    done = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.6f}",
            "--until",
            f"{until:.6f}",
            "--filter",
            "event=create",
            "--filter",
            MANAGED,
            *owner,
            "--format",
            "{{json .Actor.Attributes}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture
def container_creations() -> Callable[..., list[dict[str, str]]]:
    """``container_creations(since, until)``: see :func:`created_containers`."""
    return created_containers


def users_of_running_containers(process: subprocess.Popen[bytes], log: Path) -> list[str]:
    """The ``Config.User`` of the containers a background kliko-async ``process`` runs.

    Polls until one of its containers (found by its owner label) is running, then lets the
    process finish; it must succeed.
    """
    owner = f"label=io.kliko-async.owner={socket.gethostname()}:{process.pid}"
    users: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not users and process.poll() is None and time.monotonic() < deadline:
            found = subprocess.run(
                ["docker", "ps", "-q", "--filter", owner], capture_output=True, text=True
            ).stdout.split()
            if found:
                users = subprocess.run(
                    ["docker", "inspect", "--format", "{{.Config.User}}", *found],
                    capture_output=True,
                    text=True,
                ).stdout.split()
            time.sleep(0.1)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return users


@pytest.fixture
def container_users() -> Callable[[subprocess.Popen[bytes], Path], list[str]]:
    """``container_users(process, log)``: see :func:`users_of_running_containers`."""
    return users_of_running_containers


TEST_TAGS: list[str] = []
"""Every image tag the tests built: removed when the session ends, so that running the suite
leaves no image behind on the engine (each run made about forty before)."""


def new_test_tag(name: str) -> str:
    """A unique ``kliko-async-test/<name>-<random>`` tag, removed at the end of the session."""
    tag = f"kliko-async-test/{name}-{uuid.uuid4().hex[:10]}"
    TEST_TAGS.append(tag)
    return tag


@pytest.fixture(scope="session", autouse=True)
def _remove_test_images() -> Iterator[None]:
    yield
    if TEST_TAGS:
        subprocess.run(["docker", "rmi", "-f", *TEST_TAGS], capture_output=True)


def build_kliko_image(context: Path, kliko_yml: str, script: str) -> str:
    """Build a Kliko image the upstream way (``FROM kliko-async/busybox``, its kliko.yml and an
    executable kliko script, no CMD) in the new folder ``context``; its unique tag."""
    context.mkdir(parents=True)
    (context / "kliko.yml").write_text(kliko_yml)
    (context / "kliko").write_text(script)
    (context / "kliko").chmod(0o755)
    (context / "Dockerfile").write_text(
        "FROM kliko-async/busybox\nCOPY kliko.yml /kliko.yml\nCOPY kliko /kliko\n"
    )
    tag = new_test_tag(context.name)
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True
    )
    return tag


def out_too_deep_to_copy_into(tmp_path: Path) -> Path:
    """A writable ``--out`` (made), so deep that a step's copy inside it is longer than the
    system allows: the run itself succeeds and its export fails, for root and any user alike
    (an ``--out`` that cannot be written at all is refused before the run)."""
    out = tmp_path
    while len(str(out)) < os.pathconf("/", "PC_PATH_MAX") - 60:  # room for out/, not a copy
        out = out / ("d" * 50)
    out.mkdir(parents=True)
    return out


def derived_image(base: str, name: str, run: str, context: Path) -> str:
    """An image ``FROM base`` changed by the shell line ``run``; its unique tag."""
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN {run}\n")
    tag = new_test_tag(name)
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True
    )
    return tag


@pytest.fixture(scope="session")
def kliko_image_builder(example_images: None) -> Callable[[Path, str, str], str]:
    """``kliko_image_builder(context, kliko_yml, script)``: see :func:`build_kliko_image`."""
    return build_kliko_image


HELD_KLIKO_YML = """\
schema_version: 3
name: held
description: Runs until the test releases it (SIGUSR1), then writes its tag to /output.
io: split
sections:
  - name: held
    fields:
      - {name: tag, type: str, initial: "", help_text: makes steps distinct}
"""
HELD_SCRIPT = """\
#!/bin/sh
trap 'echo released; cp /parameters.json /output/; exit 0' USR1
echo held
while :; do sleep 1 & wait $!; done
"""


@pytest.fixture(scope="session")
def held_image(tmp_path_factory: pytest.TempPathFactory, example_images: None) -> Iterator[str]:
    """A Kliko image whose step says ``held`` and then runs until :func:`release_steps` lets it
    end (successfully): a test sees a step running for as long as it needs to, on any machine,
    instead of racing a ``sleep`` of a few seconds."""
    tag = build_kliko_image(tmp_path_factory.mktemp("held") / "held", HELD_KLIKO_YML, HELD_SCRIPT)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def release_steps(owner_pid: int, *steps: str) -> None:
    """End the running ``held_image`` containers of ``steps`` started by process ``owner_pid``.

    Call it only once each step has said ``held`` (its signal handler is then in place).
    """
    owner = f"label={OWNER}={socket.gethostname()}:{owner_pid}"
    for step in steps:
        found = subprocess.run(
            [
                "docker",
                "ps",
                "-q",
                "--filter",
                owner,
                "--filter",
                f"label=io.kliko-async.step={step}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert found, f"step {step} of process {owner_pid} is not running"
        subprocess.run(
            ["docker", "kill", "--signal", "USR1", *found], check=True, capture_output=True
        )


@pytest.fixture
def release() -> Callable[..., None]:
    """``release(owner_pid, *steps)``: see :func:`release_steps`."""
    return release_steps


def wait_for_output(
    process: subprocess.Popen[bytes], log: Path, *texts: str, timeout: float = 120
) -> str:
    """Wait until each of ``texts`` is in ``log``, the output of the running ``process``; the
    log so far. Fails (never hangs) when the process ended first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not all(text in (output := log.read_text()) for text in texts):
        assert process.poll() is None, f"ended before saying {texts}:\n{output}"
        assert time.monotonic() < deadline, f"not said within {timeout:.0f}s: {texts}\n{output}"
        time.sleep(0.05)
    return output


@pytest.fixture
def output_of() -> Callable[..., str]:
    """``output_of(process, log, *texts)``: see :func:`wait_for_output`."""
    return wait_for_output
