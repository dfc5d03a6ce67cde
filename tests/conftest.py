"""Shared test settings: async tests run on anyio's asyncio backend; folders nobody may write
or read, and how to meet them as root too."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write in: a read-only bind mount as root (who ignores permission
    bits), else a folder without write permission."""
    folder = tmp_path / "shared"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True
        )
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def as_any_user() -> list[str]:
    """What to put before a command so that it meets permission bits as any user does: root
    passes them through two capabilities, which setpriv drops (a user needs nothing)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody but root may read or look into (another user's cache, /root)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
