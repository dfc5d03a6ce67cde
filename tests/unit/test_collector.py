"""The garbage collector's settings while kliko-async reads, plans and runs a chain
(kliko_async.collector), and Ctrl-C while a chain file is read: both about big chains."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kliko_async import collector
from kliko_async.model import yamltext


@pytest.fixture(autouse=True)
def collector_as_it_was() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


def test_fewer_collections_while_in_use_and_the_settings_back_after_the_last_user() -> None:
    gc.set_threshold(700, 10, 10)
    with collector.fewer_collections():
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)
        with collector.fewer_collections():  # nested (a run inside a run's process)
            pass
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_of_the_application_is_kept() -> None:
    gc.set_threshold(50_000, 20, 5)
    with collector.fewer_collections():
        assert gc.get_threshold() == (50_000, 20, 5)
    assert gc.get_threshold() == (50_000, 20, 5)


def test_the_collector_is_paused_while_yaml_is_composed_and_enabled_again_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []
    compose = yamltext._load_with

    def load_with(loader: yamltext._StrictLoader) -> object:
        seen.append(gc.isenabled())
        return compose(loader)

    monkeypatch.setattr(yamltext, "_load_with", load_with)
    gc.enable()
    assert yamltext.parse_yaml_text("a: [1, 2]\n") == {"a": [1, 2]}
    assert seen == [False] and gc.isenabled()
    with pytest.raises(yamltext.YamlTextError):
        yamltext.parse_yaml_text("a: [1, 2\n")
    assert gc.isenabled()  # an error on the way leaves it enabled too


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    with collector.collector_paused():
        pass
    assert not gc.isenabled()


def test_pauses_from_several_threads_end_with_the_collector_enabled() -> None:
    gc.enable()
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        for _ in range(200):
            yamltext.parse_yaml_text("a: 1\n")

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gc.isenabled()


def test_ctrl_c_while_a_chain_file_is_read_in_one_long_c_call_is_answered_at_once(
    tmp_path: Path,
) -> None:
    """libyaml composes a whole chain file in one C call (seconds for 100,000 steps), which no
    signal handler interrupts in the thread that makes it. Here that call is PBKDF2 with a
    billion rounds (C as well, minutes long; like libyaml's, it lets other threads run): the
    command must still end at Ctrl-C, as interrupted."""
    script = tmp_path / "slow_load.py"
    script.write_text(
        textwrap.dedent(
            """\
            import hashlib, sys
            import kliko_async.model.chain as chain
            def load_chain(path, sets=None):
                print("loading", flush=True)
                return hashlib.pbkdf2_hmac("sha256", b"k", b"salt", 10**9)  # one C call
            chain.load_chain = load_chain
            from kliko_async.cli import main
            main(["run", "--dry-run", sys.argv[1]])
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "chain.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"loading\n"
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
