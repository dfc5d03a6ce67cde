"""Integration tests run real containers on a real Docker Engine.

With ``CI=true`` a missing engine is a failure, never a skip (``.ci/run`` starts one with
scripts/ensure-docker). The example images are built once per session by scripts/build-images.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANAGED = "label=io.kliko-async.managed=1"


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


@pytest.fixture(autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every integration test, no kliko-async container may remain."""
    yield
    if "docker_engine" in request.fixturenames and _engine_answers():
        assert managed_containers() == [], "a kliko-async container was left behind"
