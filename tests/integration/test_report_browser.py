"""A run's report, as a person opens it: a real chain on the real engine, ``run --report``, then
the page in a real headless browser (Debian's chromium). The DOM the browser built must show the
graph, the timeline and the failed step's details; a screenshot is kept as a test artefact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def artefacts(tmp_path: Path) -> Path:
    """Where screenshots are kept: $KLIKO_TEST_ARTEFACTS, else test-artefacts/ in the checkout
    (or the test's folder, for a user who may not write the checkout)."""
    if "KLIKO_TEST_ARTEFACTS" in os.environ:
        return Path(os.environ["KLIKO_TEST_ARTEFACTS"])
    return ROOT / "test-artefacts" if os.access(ROOT, os.W_OK) else tmp_path / "artefacts"


CHAIN = """\
steps:
  gen: {image: example/gen, params: {n: 3}}
  upper: {image: example/upper, inputs: [gen]}
  broken:
    image: example/fail
    inputs: [gen]
    params: {code: 7, message: "the <b>flux</b> is negative"}
  merge: {image: example/merge, inputs: [upper, broken]}
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is missing: scripts/setup installs it for these tests")
    return found


def browse(page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless chromium, as the machine notes say it runs here."""
    profile = page.parent / "chromium-profile"
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_report_of_a_run_in_a_real_browser(
    tmp_path: Path, kliko: KlikoCli, example_images: None
) -> None:
    (tmp_path / "chain.yaml").write_text(CHAIN)
    report = tmp_path / "report.html"
    done = kliko("run", "chain.yaml", "--plain", "--keep-going", "--report", report)
    assert done.returncode == 1, done.stderr  # broken fails, merge is skipped
    assert f"the run's report is in {report}" in done.stderr

    dom = browse(report, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    nodes = dict(re.findall(r'<g class="node" data-step="([^"]+)" data-state="([^"]+)"', html))
    assert nodes == {"gen": "ran", "upper": "ran", "broken": "failed", "merge": "skipped"}
    rows = re.findall(r'<g class="row" data-step="([^"]+)"', html)
    assert rows == ["gen", "upper", "broken", "merge"]
    assert len(re.findall(r'class="bar ran"', html)) == 2
    assert 'class="bar failed"' in html
    failure = html[html.index('class="failure" data-step="broken"') :]
    failure = failure[: failure.index("</tr>")]
    assert "exited with code 7" in failure
    broken_row = html[html.index('id="step-broken"') :]
    assert re.search(r"example/fail<br><code>sha256:[0-9a-f]{12}", broken_row[:2000])
    assert "the &lt;b&gt;flux&lt;/b&gt; is negative" in failure  # shown, never rendered as markup
    assert "sha256:" in html  # image IDs of the steps that ran

    folder = artefacts(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report.png"
    shot.unlink(missing_ok=True)
    taken = browse(report, f"--screenshot={shot}", "--window-size=1280,1100")
    assert taken.returncode == 0, taken.stderr
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = kliko("report", "-o", tmp_path / "latest.html")
    assert again.returncode == 0, again.stderr
    assert 'data-step="broken" data-state="failed"' in (tmp_path / "latest.html").read_text()


def test_no_report_without_a_run_is_one_clear_line(kliko: KlikoCli) -> None:
    done = kliko("report", "-o", "r.html")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "no run has been recorded" in done.stderr
    assert "Traceback" not in done.stderr
