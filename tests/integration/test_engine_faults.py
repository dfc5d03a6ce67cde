"""Faults of the engine itself, on the real engine: a connection dropped mid-step, the engine
killed mid-run. A transient fault is waited through (the container runs on); a step that truly
fails is a step failure with its reason; a run never dies of one, never with a traceback.

Connections are dropped by a unix-socket proxy in front of the shared engine. Killing an engine
needs one of its own (``own_engine``): the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

import kliko_async
from kliko_async.cache.logfiles import log_content
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import verify
from kliko_async.runtime.docker import DockerRuntime

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.load, pytest.mark.usefixtures("example_images")]

ENGINE_SOCKET = "/var/run/docker.sock"

KLIKO_YML = """\
schema_version: 3
name: chatty
description: Writes numbered lines for a while, a long line, then ends with a chosen code.
io: split
sections:
  - name: ending
    description: How it ends
    fields:
      - {name: code, type: int, initial: 0}
      - {name: lines, type: int, initial: 40}
"""

SCRIPT = r"""#!/bin/sh
lines=$(sed -n 's/.*"lines": *\([0-9]*\).*/\1/p' /parameters.json)
i=0
while [ "$i" -lt "$lines" ]; do echo "line $i"; i=$((i + 1)); sleep 0.1; done
head -c 40000 /dev/zero | tr '\0' y
echo
echo done > /output/done.txt
exit "$(sed -n 's/.*"code": *\([0-9]*\).*/\1/p' /parameters.json)"
"""

EXPECTED_LOG = b"".join(b"line %d\n" % i for i in range(40)) + b"y" * 40000 + b"\n"


@pytest.fixture(scope="module")
def chatty_image(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Callable[[Path, str, str], str]
) -> str:
    return kliko_image_builder(tmp_path_factory.mktemp("img") / "chatty", KLIKO_YML, SCRIPT)


class DroppingProxy:
    """Relays a unix socket to the engine's, and drops every connection open at the moment the
    engine first sends ``trigger`` (as a flaky network or an engine hiccup would).

    Built on asyncio's streams, not anyio's: a cancelled receive on an anyio UNIX socket stream
    leaves its reader registered until a callback runs, and a socket turning readable in that
    moment raised InvalidStateError in the event loop (once in three runs under load); the
    relays here end by aborting their transports, never by cancelling a read.
    """

    def __init__(self, path: Path, trigger: bytes) -> None:
        self.path = path
        self.trigger = trigger
        self.dropped = 0
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        server = await asyncio.start_unix_server(self._relay, path=str(self.path))
        task_status.started()
        async with server:
            await server.serve_forever()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            engine, to_engine = await asyncio.open_unix_connection(ENGINE_SOCKET)
        except OSError:
            to_client.transport.abort()
            return
        pair = (to_client, to_engine)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pump(client, to_engine, pair, watch=False),
                self._pump(engine, to_client, pair, watch=True),
            )
        finally:
            self._open.discard(pair)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        watch: bool,
    ) -> None:
        seen = b""
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
                seen = (seen + chunk)[-len(self.trigger) - len(chunk) :]
                if watch and not self.dropped and self.trigger in seen:
                    self.dropped = len(self._open)
                    for writers in list(self._open):
                        for writer in writers:
                            writer.transport.abort()  # as a dropped connection: no goodbye
        except (OSError, ConnectionError):
            pass
        for writer in pair:  # one side ended: so does the other
            writer.transport.abort()


def saved_log(cache: Cache, step: str) -> bytes:
    (entry,) = [e for e in cache.entries() if e.manifest.step == step]
    return log_content(entry.log_path)


@pytest.mark.anyio
async def test_a_connection_dropped_mid_step_is_waited_through(
    tmp_path: Path, chatty_image: str
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        f"  fine: {{image: {chatty_image}, params: {{code: 0}}}}\n"
        f"  broken: {{image: {chatty_image}, params: {{code: 4}}}}\n"
        f"  after: {{image: {chatty_image}, params: {{code: 0, lines: 2}}, inputs: [fine]}}\n"
    )
    proxy = DroppingProxy(tmp_path / "engine.sock", trigger=b"line 15\n")
    runtime = DockerRuntime(url=f"unix://{proxy.path}")
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        try:
            result = await kliko_async.run(
                chain, runtime=runtime, cache_dir=tmp_path / "cache", jobs=2, keep_going=True
            )
            in_use = runtime.connections_in_use
        finally:
            await runtime.aclose()
            tg.cancel_scope.cancel()

    assert proxy.dropped >= 2  # at least the wait and the log of a running step
    steps = result.steps
    assert steps["fine"].state == "done"
    assert steps["after"].state == "done"
    assert steps["broken"].state == "failed"
    assert steps["broken"].reason == "exited with code 4"
    assert (
        steps["broken"].last_lines[-1]
        == "y" * 10_000 + "… (30,000 more characters in the saved log)"
    )
    cache = Cache(tmp_path / "cache")
    assert saved_log(cache, "fine") == EXPECTED_LOG  # every line once, none lost
    assert log_content(steps["broken"].log_path or Path("-")) == EXPECTED_LOG
    assert verify(cache) == []
    assert in_use == 0


class OwnEngine:
    """A Docker Engine of this test's own (own roots, socket, pid file and network bridge), to
    kill and restart without touching the shared one.

    Not ``--bridge=none``: an engine started so deletes the host's ``docker0``, the shared
    engine's bridge, and the shared engine can then start no container.
    """

    def __init__(self, root: Path, bridge: str) -> None:
        self.root = root
        self.bridge = bridge
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    *("--data-root", str(self.root / "data")),
                    *("--exec-root", str(self.root / "exec")),
                    *("--pidfile", str(self.root / "dockerd.pid")),
                    *("-H", self.host),
                    *("--bridge", self.bridge, "--iptables=false", "--ip6tables=false"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            assert self.process.poll() is None, (self.root / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the test's own engine did not start in 60 s"
            time.sleep(0.2)

    def kill(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=60)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, check=check
        )

    def managed_containers(self) -> list[str]:
        found = self.docker("ps", "-aq", "--filter", "label=io.kliko-async.managed=1")
        return found.stdout.split()


@pytest.fixture
def own_engine(chatty_image: str) -> Iterator[OwnEngine]:
    if shutil.which("dockerd") is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("starting an engine of the test's own needs dockerd, ip and root")
    name = uuid.uuid4().hex[:8]
    engine = OwnEngine(Path("/tmp") / f"kliko-engine-{name}", bridge=f"kaf{name}")
    engine.root.mkdir()
    subnet = f"10.213.{int(name[:2], 16)}.1/24"
    for command in (
        ["ip", "link", "add", engine.bridge, "type", "bridge"],
        ["ip", "addr", "add", subnet, "dev", engine.bridge],
        ["ip", "link", "set", engine.bridge, "up"],
    ):
        subprocess.run(command, check=True, capture_output=True)
    try:
        engine.start()
        images = subprocess.run(
            ["docker", "save", "kliko-async/busybox", chatty_image],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(
            ["docker", "-H", engine.host, "load"], input=images, capture_output=True, check=True
        )
        yield engine
    finally:
        if engine.process is not None and engine.process.poll() is None:
            engine.kill(signal.SIGTERM)
        remove_engine_remains(engine.root)
        subprocess.run(["ip", "link", "del", engine.bridge], check=False, capture_output=True)
        shutil.rmtree(engine.root, ignore_errors=True)


def remove_engine_remains(root: Path) -> None:
    """What a killed engine leaves: its containers' shims (and so the containers) and the
    mounts under its roots (dockerd also mounts its data root onto itself)."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"containerd-shim" in command and str(root).encode() in command:
            subprocess.run(["pkill", "-KILL", "-P", proc.name], check=False)
            os.kill(int(proc.name), signal.SIGKILL)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def test_the_engine_killed_mid_run_is_named_and_what_finished_is_kept(
    kliko: KlikoCli, tmp_path: Path, chatty_image: str, own_engine: OwnEngine
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        f"  quick: {{image: {chatty_image}, params: {{lines: 1}}}}\n"
        f"  nap: {{image: {chatty_image}, params: {{lines: 3000}}}}\n"
        f"  after: {{image: {chatty_image}, params: {{lines: 1}}, inputs: [nap]}}\n"
    )
    cache_dir = tmp_path / "cache"
    kliko.env["DOCKER_HOST"] = own_engine.host
    output = tmp_path / "run.log"
    process = kliko.popen("run", chain, "--cache-dir", cache_dir, "--plain", log=output)
    try:
        deadline = time.monotonic() + 120
        while not (
            [e for e in Cache(cache_dir).entries() if e.manifest.step == "quick"]
            and own_engine.docker("ps", "-q", "--filter", "label=io.kliko-async.step=nap").stdout
        ):
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "quick did not finish, or nap did not start"
            time.sleep(0.2)
        (nap,) = own_engine.managed_containers()

        own_engine.kill(signal.SIGKILL)
        status = process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    said = output.read_text()
    assert status != 0, said
    assert "Traceback" not in said
    assert "went away" in said and nap[:12] in said, said
    assert "killed from outside" not in said and "could not remove" not in said, said

    # Once the engine is back: what finished is kept and sound, and the next run removes what
    # the killed engine left.
    own_engine.start()
    assert [e.manifest.step for e in Cache(cache_dir).entries()] == ["quick"]
    assert verify(Cache(cache_dir)) == []
    quick_only = tmp_path / "quick.yaml"
    quick_only.write_text(f"steps:\n  quick: {{image: {chatty_image}, params: {{lines: 1}}}}\n")
    again = kliko("run", quick_only, "--cache-dir", cache_dir, "--plain")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "quick | cached" in again.stdout, again.stdout
    assert own_engine.managed_containers() == []
