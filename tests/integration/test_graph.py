"""``kliko-async graph``: a chain's DAG in the terminal, as Graphviz dot, and as SVG."""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

DIAMOND = Path(__file__).resolve().parents[2] / "examples" / "chains" / "diamond.yaml"
pytestmark = pytest.mark.usefixtures("example_images")


def test_graph_draws_layers_edges_and_cache_state(kliko: KlikoCli, tmp_path: Path) -> None:
    before = kliko("graph", DIAMOND, "--cache-dir", tmp_path / "c")
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    assert lines[0].endswith("4 steps in 3 layers; 0 cached, 4 to run")
    assert lines[1:] == [
        "layer 1",
        "  gen    to run  example/gen    → upper, lower",
        "layer 2",
        "  upper  to run  example/upper  ← gen  → merge",
        "  lower  to run  example/lower  ← gen  → merge",
        "layer 3",
        "  merge  to run  example/merge  ← upper, lower",
    ]
    assert kliko("run", DIAMOND, "--cache-dir", tmp_path / "c", "--plain").returncode == 0

    after = kliko("graph", DIAMOND, "--cache-dir", tmp_path / "c").stdout
    assert "4 cached, 0 to run" in after
    assert re.search(r"^  merge  cached  example/merge  ← upper, lower$", after, re.M)


def test_graph_as_dot_and_svg(kliko: KlikoCli, tmp_path: Path) -> None:
    dot = kliko("graph", DIAMOND, "--cache-dir", tmp_path / "c", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    edges = re.findall(r'^  "(\w+)" -> "(\w+)";$', dot.stdout, re.M)
    assert sorted(edges) == [
        ("gen", "lower"),
        ("gen", "upper"),
        ("lower", "merge"),
        ("upper", "merge"),
    ]
    assert dot.stdout.startswith("digraph chain {") and dot.stdout.endswith("}\n")

    assert shutil.which("dot"), "Graphviz's dot (scripts/setup installs it) draws the SVG"
    out = tmp_path / "chain.svg"
    svg = kliko("graph", DIAMOND, "--cache-dir", tmp_path / "c", "--format", "svg", "-o", out)
    assert svg.returncode == 0, svg.stderr
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text")}
    assert {"gen", "upper", "lower", "merge"} <= texts


def test_graph_as_svg_without_graphviz_says_what_to_install(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    kliko.env["PATH"] = os.pathsep.join(
        p for p in kliko.env["PATH"].split(os.pathsep) if not (Path(p) / "dot").exists()
    )
    done = kliko("graph", DIAMOND, "--cache-dir", tmp_path / "c", "--format", "svg")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "needs Graphviz's 'dot' program" in done.stderr
    assert "apt-get install graphviz" in done.stderr


@pytest.mark.parametrize("format", ["text", "dot"])
def test_a_graph_file_in_a_folder_you_may_not_write_is_one_line(
    kliko: KlikoCli, locked: Path, as_any_user: list[str], format: str
) -> None:
    """As kliko-tester, 'graph chain.yaml -o /root/g.txt' ended in a PermissionError traceback
    (the text format opened the file itself); dot said it in a line, with exit status 1."""
    done = kliko("graph", DIAMOND, "--format", format, "-o", locked / "g", before=as_any_user)

    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"kliko-async: error: -o {locked / 'g'}: could not write the graph: Permission denied. "
        "Give a file in a folder you can write.\n"
    )
