"""``kliko-async why`` and ``run --explain`` on a real engine, for every kind of key ingredient a
user can change: a parameter, a file parameter's content, the image (rebuilt), its IO mode, the
environment, an input (chased upstream), a step that never ran, and a cached step's entry."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

KLIKO_YML = """\
schema_version: 3
io: {io}
sections:
  - name: main
    fields:
      - {{name: n, type: int, initial: 1}}
      - {{name: model, type: file, required: false}}
"""

KLIKO = """\
#!/bin/sh
# {version}
out=/output; [ -d /work ] && out=/work
echo "made" > "$out/made.txt"
"""

CHAIN = """\
steps:
  make:
    build: tool
    params: {params}
    env: {env}
  shout: {{image: example/upper, inputs: [make]}}
"""


def write_tool(folder: Path, *, io: str = "split", version: str = "v1") -> None:
    tool = folder / "tool"
    tool.mkdir(exist_ok=True)
    (tool / "Dockerfile").write_text(
        "FROM kliko-async/busybox\nCOPY kliko.yml /kliko.yml\nCOPY kliko /kliko\n"
    )
    (tool / "kliko.yml").write_text(KLIKO_YML.format(io=io))
    (tool / "kliko").write_text(KLIKO.format(version=version))
    (tool / "kliko").chmod(0o755)


def write_chain(folder: Path, params: str = "{n: 5, model: model.txt}", env: str = "{}") -> Path:
    path = folder / "chain.yaml"
    path.write_text(CHAIN.format(params=params, env=env))
    return path


def why(kliko: KlikoCli, folder: Path, *args: str) -> dict[str, str]:
    """The first line ``why`` prints for each step, by step."""
    done = kliko("why", folder / "chain.yaml", *args, "--cache-dir", folder / "cache")
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if not line.startswith(" "):
            step, _, rest = line.partition(": ")
            found[step] = rest
    return found


def run(kliko: KlikoCli, folder: Path) -> str:
    done = kliko("run", folder / "chain.yaml", "--cache-dir", folder / "cache", "--plain")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_why_names_every_changed_ingredient(kliko: KlikoCli, tmp_path: Path) -> None:
    write_tool(tmp_path)
    write_chain(tmp_path)
    model = tmp_path / "model.txt"
    model.write_text("first model\n")
    assert why(kliko, tmp_path) == {"make": "would run: never ran", "shout": "would run: never ran"}

    run_output = run(kliko, tmp_path)
    run_id = re.search(r"run ([0-9a-f]{12})", run_output)
    assert run_id is not None, run_output
    cached = why(kliko, tmp_path)
    assert re.fullmatch(
        rf"cached: entry [0-9a-f]{{12}} made \S+ \S+ UTC by run {run_id.group(1)}, ran \d+\.\ds",
        cached["shout"],
    ), cached

    # A parameter, and the input that re-runs because of it.
    write_chain(tmp_path, params="{n: 7, model: model.txt}")
    found = why(kliko, tmp_path)
    assert found["make"] == "would run: parameter n: 5 -> 7"
    assert found["shout"] == "would run: input make: re-runs (parameter n: 5 -> 7)"

    # A file parameter's content.
    write_chain(tmp_path)
    before = hashlib_of(model)
    model.write_text("second model\n")
    after = hashlib_of(model)
    found = why(kliko, tmp_path, "make")
    assert found == {
        "make": f"would run: file parameter model: content changed "
        f"(sha256 {before[:12]}.. -> {after[:12]}..)"
    }
    model.write_text("first model\n")

    # The environment.
    write_chain(tmp_path, env="{OMP_NUM_THREADS: '4'}")
    assert why(kliko, tmp_path, "make") == {"make": "would run: env OMP_NUM_THREADS added"}
    write_chain(tmp_path)
    assert why(kliko, tmp_path, "make")["make"].startswith("cached: ")

    # The image, rebuilt from a changed folder; then also with another IO mode.
    write_tool(tmp_path, version="v2")
    found = why(kliko, tmp_path)
    tool = str(tmp_path / "tool")
    assert re.fullmatch(
        rf"would run: image {re.escape(tool)}: rebuilt "
        r"\(sha256:[0-9a-f]{12}\.\. -> sha256:[0-9a-f]{12}\.\.\)",
        found["make"],
    ), found
    assert found["shout"].startswith(f"would run: input make: re-runs (image {tool}: rebuilt")
    write_tool(tmp_path, io="join")
    assert why(kliko, tmp_path, "make")["make"].endswith("; io: split -> join")


def test_run_explain_and_json(kliko: KlikoCli, tmp_path: Path) -> None:
    write_tool(tmp_path)
    write_chain(tmp_path, params="{n: 5}")
    run(kliko, tmp_path)
    write_chain(tmp_path, params="{n: 6}")
    chain, cache = tmp_path / "chain.yaml", tmp_path / "cache"

    dry = kliko("run", chain, "--cache-dir", cache, "--dry-run", "--explain")
    assert dry.returncode == 0, dry.stderr
    assert "2 to run, 0 cached" in dry.stdout
    assert "make: would run: parameter n: 5 -> 6\n" in dry.stdout
    assert "shout: would run: input make: re-runs (parameter n: 5 -> 6)\n" in dry.stdout
    assert "  it would have matched entry " in dry.stdout

    listed = kliko("why", chain, "shout", "--json", "--cache-dir", cache)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    data = json.loads(line)
    assert data["step"] == "shout" and data["state"] == "would run"
    assert data["changes"][0]["ingredient"] == "input"
    assert data["changes"][0]["root_causes"] == [{"step": "make", "text": "parameter n: 5 -> 6"}]

    ran = kliko("run", chain, "--cache-dir", cache, "--plain", "--explain")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.index("make: would run: parameter n: 5 -> 6") < ran.stdout.index(
        "make | started"
    )


def test_why_refuses_an_unknown_step(kliko: KlikoCli, tmp_path: Path) -> None:
    write_tool(tmp_path)
    write_chain(tmp_path, params="{n: 5}")
    done = kliko("why", tmp_path / "chain.yaml", "shuot", "--cache-dir", tmp_path / "cache")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "has no step named 'shuot' (did you mean 'shout'?)" in done.stderr


def hashlib_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
