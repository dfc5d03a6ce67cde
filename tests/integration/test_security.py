"""What a step's container can and cannot do: never privileged, never the Docker socket, the
invoking user unless the step says otherwise, read-only inputs and parameters, read-only cache
entries, and nothing written outside its own folders."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

TAMPER_SPEC = """\
schema_version: 3
name: tamper
io: split
sections:
  - name: s
    fields:
      - {name: secret, type: file}
"""

# Tries to write everywhere it must not; reports each attempt and succeeds anyway, so that the
# test sees what happened rather than a failed step.
TAMPER_SCRIPT = """\
#!/bin/sh
for target in /input/numbers.txt /input/new.txt /param_files/secret /parameters.json; do
    if echo tampered > "$target" 2>/dev/null
    then echo "WROTE $target"
    else echo "refused $target"
    fi
done
if rm -f /input/numbers.txt 2>/dev/null && [ ! -e /input/numbers.txt ]; then
    echo "WROTE rm /input/numbers.txt"
else
    echo "refused rm /input/numbers.txt"
fi
cat /param_files/secret > /output/secret-seen.txt
echo done > /output/done.txt
"""

JOIN_TAMPER_SPEC = "schema_version: 3\nname: join-tamper\nio: join\nsections: []\n"
JOIN_TAMPER_SCRIPT = """\
#!/bin/sh
echo tampered > /work/numbers.txt
echo extra > /work/extra.txt
"""


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("images")
    tags: dict[str, str] = {}
    try:
        tags["tamper"] = kliko_image_builder(root / "tamper", TAMPER_SPEC, TAMPER_SCRIPT)
        tags["join-tamper"] = kliko_image_builder(
            root / "join-tamper", JOIN_TAMPER_SPEC, JOIN_TAMPER_SCRIPT
        )
        yield tags
    finally:
        if tags:
            subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


def entries_by_step(cache: Path) -> dict[str, Path]:
    found = {}
    for manifest in (cache / "entries").rglob("manifest.json"):
        found[json.loads(manifest.read_text())["step"]] = manifest.parent
    return found


def tree_state(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root``: its mode and, for files, its bytes."""
    return {
        p.relative_to(root).as_posix(): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# -- the containers themselves -----------------------------------------------------------------

TWO_HELD = """\
steps:
  mine: {{image: {held}, params: {{tag: mine}}}}
  theirs: {{image: {held}, params: {{tag: theirs}}, user: "1234:1234"}}
  reader: {{image: example/upper, inputs: [mine]}}
"""


def inspect_running(process: subprocess.Popen[bytes], steps: set[str]) -> dict[str, Any]:
    """``docker inspect`` of the running container of each of ``steps``, by step name."""
    found: dict[str, Any] = {}
    owner = f"label=io.kliko-async.owner={socket.gethostname()}:{process.pid}"
    deadline = time.monotonic() + 60
    while set(found) != steps and time.monotonic() < deadline:
        assert process.poll() is None, "kliko-async ended before its containers were seen"
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", owner], capture_output=True, text=True, check=True
        ).stdout.split()
        if ids:
            done = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
            for info in json.loads(done.stdout or "[]"):
                step = info["Config"]["Labels"].get("io.kliko-async.step")
                if step in steps and info["State"]["Running"]:
                    found[step] = info
        time.sleep(0.1)
    assert set(found) == steps, f"saw only {sorted(found)}"
    return found


def test_step_containers_are_unprivileged_without_the_docker_socket_and_run_as_the_user(
    kliko: KlikoCli,
    tmp_path: Path,
    held_image: str,
    release: Callable[..., None],
    output_of: Callable[..., str],
) -> None:
    chain = tmp_path / "held.yaml"
    chain.write_text(TWO_HELD.format(held=held_image))
    cache = tmp_path / "cache"
    log = tmp_path / "run.log"
    process = kliko.popen("run", chain, "--cache-dir", cache, "--plain", "-j", "4", log=log)
    try:
        seen = inspect_running(process, {"mine", "theirs"})  # they run until released
        output_of(process, log, "mine | held", "theirs | held")
        release(process.pid, "mine", "theirs")
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert seen["mine"]["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert seen["theirs"]["Config"]["User"] == "1234:1234", "a step's own user is respected"
    for step, info in seen.items():
        host = info["HostConfig"]
        assert host["Privileged"] is False, step
        assert not host.get("CapAdd"), step
        assert not host.get("Devices"), step
        for mode in ("PidMode", "IpcMode", "NetworkMode", "UsernsMode"):
            assert host.get(mode) != "host", (step, mode)
        binds = host.get("Binds") or []
        sources = [m["Source"] for m in info["Mounts"]]
        assert not any("docker.sock" in b for b in binds), binds
        assert not any("docker.sock" in s for s in sources), sources
        root = str(cache.resolve())
        for mount in info["Mounts"]:
            assert mount["Type"] == "bind", mount
            assert mount["Source"].startswith(root + "/"), f"only the cache's folders: {mount}"
            writable = mount["Destination"] in ("/output", "/work")
            assert mount["RW"] is writable, mount


# -- inputs and parameters are read-only -------------------------------------------------------


def test_a_step_cannot_change_its_inputs_or_parameters(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("calibration table v3\n")
    secret_before = (secret.read_bytes(), secret.stat().st_mtime_ns)
    chains = tmp_path / "chains"
    chains.mkdir()
    chain = chains / "tamper.yaml"
    chain.write_text(
        "steps:\n"
        "  gen: {image: example/gen, params: {n: 3}}\n"
        f"  tamper: {{image: {images['tamper']}, inputs: [gen],"
        " params: {secret: ../outside/secret.txt}}\n"
    )
    cache, out = tmp_path / "cache", tmp_path / "out"

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    attempts = [line.split(" | ", 1)[1] for line in done.stdout.splitlines() if "tamper | " in line]
    assert [a for a in attempts if a.startswith("WROTE")] == [], attempts
    for target in (
        "/input/numbers.txt",
        "/input/new.txt",
        "/param_files/secret",
        "/parameters.json",
    ):
        assert f"refused {target}" in attempts, attempts
    assert "refused rm /input/numbers.txt" in attempts
    gen = entries_by_step(cache)["gen"]
    assert (gen / "output" / "numbers.txt").read_text() == "line 1\nline 2\nline 3\n"
    assert sorted(p.name for p in (gen / "output").iterdir()) == ["numbers.txt"]
    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 0, verified.stdout
    # A file parameter with '..' resolves to a host file that is copied in, never written.
    assert (secret.read_bytes(), secret.stat().st_mtime_ns) == secret_before
    assert (out / "tamper" / "secret-seen.txt").read_text() == "calibration table v3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "chains", "out", "outside"]


def test_a_join_step_changes_only_its_copy_of_the_inputs(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    chain = tmp_path / "join.yaml"
    chain.write_text(
        "steps:\n"
        "  gen: {image: example/gen, params: {n: 2}}\n"
        f"  scribble: {{image: {images['join-tamper']}, inputs: [gen]}}\n"
    )
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = kliko("run", chain, "--cache-dir", cache, "--plain", "--force", "scribble")
    assert first.returncode == 0, first.stdout + first.stderr
    gen = entries_by_step(cache)["gen"]
    before = tree_state(gen)

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain", "--force", "scribble")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "scribble" / "numbers.txt").read_text() == "tampered\n"
    assert (out / "scribble" / "extra.txt").read_text() == "extra\n"
    assert tree_state(gen) == before, "the cached input is untouched"
    assert (gen / "output" / "numbers.txt").read_text() == "line 1\nline 2\n"


# -- an image's own defaults are never host files --------------------------------------------

GREEDY_SCRIPT = """\
#!/bin/sh
echo "parameters: $(cat /parameters.json | tr -d ' \\n')"
echo "param_files: $(ls -A /param_files 2>/dev/null)"
cat /param_files/* 2>/dev/null
echo done > "${OUT:-/output}/done.txt"
"""


def test_a_file_default_in_an_images_kliko_yml_is_never_read_from_the_host(
    kliko: KlikoCli, tmp_path: Path, kliko_image_builder: Builder
) -> None:
    """``{name: conf, type: file, initial: /etc/shadow}`` must not copy the host's file in."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("ssh-private-key-of-the-user\n")
    spec = (
        "schema_version: 3\nname: greedy\nio: split\nsections:\n  - name: s\n    fields:\n"
        f"      - {{name: conf, type: file, initial: {str(secret)!r}}}\n"
        "      - {name: extra, type: file, initial: extra.cfg}\n"
    )
    tag = kliko_image_builder(tmp_path / "greedy", spec, GREEDY_SCRIPT)
    try:
        chain = tmp_path / "chain.yaml"
        chain.write_text(f"steps:\n  greedy: {{image: {tag}}}\n")
        ran = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--plain")
        single = kliko("run-image", tag, "--output", tmp_path / "single-out")
        shown = kliko("validate", tag)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)

    for done in (ran, single):
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ssh-private-key" not in done.stdout + done.stderr
        assert f'"conf":"{secret}"' in done.stdout, "the default is passed on as a path"
        assert '"extra":"/input/extra.cfg"' in done.stdout, "relative: where Kliko puts files"
        assert "param_files: \n" in done.stdout + "\n", "nothing is copied into /param_files"
    logged = kliko("logs", chain, "greedy", "--cache-dir", tmp_path / "cache")
    assert "ssh-private-key" not in logged.stdout
    flat = " ".join(shown.stdout.split())
    assert shown.returncode == 0, shown.stderr
    assert "not a host file" in flat and "/input/extra.cfg" in flat, shown.stdout


# -- published entries -------------------------------------------------------------------------


def test_published_entries_are_writable_by_their_owner_only(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """Nobody but its owner may write an entry (0644/0755, as Kliko's images need to copy their
    input and write into the copy); what keeps it unchanged is that containers see it through a
    read-only mount or a copy (the tests above), and ``cache verify`` re-hashes it."""
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        "  gen: {image: example/gen, params: {n: 2}}\n"
        "  up: {image: example/upper, inputs: [gen], params: {suffix: .u}}\n"
        "  both: {image: example/merge, inputs: [gen, up]}\n"
    )
    cache = tmp_path / "cache"

    done = kliko("run", chain, "--cache-dir", cache, "--out", tmp_path / "out", "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    entries = entries_by_step(cache)
    assert sorted(entries) == ["both", "gen", "up"]
    for step, entry in entries.items():
        paths = [entry, *entry.rglob("*")]
        assert len(paths) > 4, step
        for path in paths:
            mode = path.lstat().st_mode
            assert mode & 0o022 == 0, f"{path} is writable by others ({stat.filemode(mode)})"
            if path.is_dir():
                assert stat.S_IMODE(mode) == 0o755, path
            else:
                assert stat.S_IMODE(mode) in (0o644, 0o755), path
    assert kliko("cache", "verify", "--cache-dir", cache).returncode == 0
    # The exported copies are the user's to change, and changing them leaves the cache alone.
    exported = tmp_path / "out" / "gen" / "numbers.txt"
    exported.write_text("edited\n")
    assert (entries["gen"] / "output" / "numbers.txt").read_text() == "line 1\nline 2\n"


def test_unsafe_step_names_never_become_folders(kliko: KlikoCli, tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    chains.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("../escape", "a/b", "/tmp/abs", "..", "."):
        chain = chains / "chain.yaml"
        chain.write_text(f"steps:\n  - {{name: '{name}', image: example/gen}}\n")
        done = kliko(
            "run", chain, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out", "--plain"
        )
        assert done.returncode != 0
        assert "is not safe as a folder name" in done.stderr, done.stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] == [Path("chains/chain.yaml")], after
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out").exists()
