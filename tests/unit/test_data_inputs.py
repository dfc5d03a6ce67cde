"""Data inputs (``data:``): host files and folders a chain starts from, keyed by content with a
stat cache, checked at planning, and given to steps as inputs (issue 26)."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from kliko_async import api
from kliko_async.cache.datahash import RECENT_NS, DataError, StatCache, digest_data
from kliko_async.display.wording import step_message
from kliko_async.errors import ChainError
from kliko_async.events import DataKeyed, DataKeying, Event
from kliko_async.model.chain import Chain, load_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

SPLIT = "schema_version: 3\nio: split\nsections: []\n"
JOIN = "schema_version: 3\nio: join\nsections: []\n"


def settled(*paths: Path) -> None:
    """Date files back beyond the "changed just now" window, as files on disk for a while are."""
    old = time.time_ns() - 10 * RECENT_NS
    for path in paths:
        os.utime(path, ns=(old, old), follow_symlinks=False)


def observation(root: Path, files: int = 20) -> Path:
    obs = root / "obs.ms"
    (obs / "table").mkdir(parents=True)
    for i in range(files):
        (obs / "table" / f"f{i}.dat").write_bytes(bytes([i]) * 1000)
    (obs / "table.info").write_text("Type = Measurement Set\n")
    (obs / "link").symlink_to("table.info")
    settled(*obs.rglob("*"))
    return obs


def test_an_unchanged_folder_is_keyed_from_stat_calls_and_one_change_reads_one_file(
    tmp_path: Path,
) -> None:
    obs = observation(tmp_path)
    cache = tmp_path / "hashes.json"
    first = digest_data(obs, stats := StatCache(cache))
    stats.save()
    assert (first.files, first.hashed_files, first.size) == (21, 21, 20 * 1000 + 23)

    again = digest_data(obs, StatCache(cache))
    assert again.digest == first.digest and again.hashed_files == 0

    os.utime(obs / "table" / "f3.dat")  # touch: read again, same key
    touched = digest_data(obs, stats := StatCache(cache))
    stats.save()
    assert touched.digest == first.digest and touched.hashed_files == 1

    (obs / "table" / "f4.dat").write_bytes(b"\x05" * 1000)  # one byte... all of them differ
    settled(obs / "table" / "f4.dat")
    changed = digest_data(obs, StatCache(cache))
    assert changed.digest != first.digest and changed.hashed_files <= 2


@pytest.mark.parametrize(
    "change",
    ["rename", "new empty folder", "executable", "link target", "one byte"],
)
def test_whatever_a_container_can_see_changes_the_digest(tmp_path: Path, change: str) -> None:
    obs = observation(tmp_path, files=2)
    before = digest_data(obs, StatCache(None)).digest
    if change == "rename":
        (obs / "table" / "f1.dat").rename(obs / "table" / "g1.dat")
    elif change == "new empty folder":
        (obs / "empty").mkdir()
    elif change == "executable":
        (obs / "table" / "f1.dat").chmod(0o755)
    elif change == "link target":
        (obs / "link").unlink()
        (obs / "link").symlink_to("table")
    else:
        data = bytearray((obs / "table" / "f1.dat").read_bytes())
        data[500] ^= 1
        (obs / "table" / "f1.dat").write_bytes(bytes(data))
    assert digest_data(obs, StatCache(None)).digest != before


def test_a_file_changed_just_now_is_not_remembered(tmp_path: Path) -> None:
    obs = observation(tmp_path, files=1)
    (obs / "table" / "f0.dat").write_bytes(b"fresh")  # written now: its mtime tick is now
    cache = tmp_path / "hashes.json"
    stats = StatCache(cache)
    digest_data(obs, stats)
    stats.save()
    assert digest_data(obs, StatCache(cache)).hashed_files == 1  # read again, not trusted


@pytest.mark.parametrize("kind", ["outside", "absolute", "fifo", "socket", "missing", "unreadable"])
def test_what_a_container_could_not_be_given_is_refused_naming_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs = observation(tmp_path, files=1)
    if kind == "outside":
        (obs / "escape").symlink_to("../../etc")
        said = "a link leading outside the data"
    elif kind == "absolute":
        (obs / "escape").symlink_to("/etc/passwd")
        said = "a link to the absolute path /etc/passwd"
    elif kind == "fifo":
        os.mkfifo(obs / "pipe")
        said = "pipe is a named pipe"
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(obs / "sock"))
        said = "sock is a socket"
    elif kind == "missing":
        obs = tmp_path / "nothing"
        said = "does not exist"
    else:  # as a user may not read it (root may: so it is told it may not)
        (obs / "table" / "f0.dat").chmod(0)
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: real_access(p, mode) and not str(p).endswith("f0.dat")
        )
        said = "f0.dat cannot be read"
    with pytest.raises(DataError, match=said):
        digest_data(obs, StatCache(None))


def write_chain(tmp_path: Path, text: str) -> Chain:
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(text))
    return load_chain(path)


def test_data_is_loaded_relative_to_the_chain_file_and_checked(tmp_path: Path) -> None:
    chain = write_chain(
        tmp_path,
        """\
        vars: {obs: obs.ms}
        data:
          obs: {path: "${vars.obs}"}
          readme: README
        steps:
          flag: {image: split, inputs: [obs]}
        """,
    )
    assert chain.data["obs"].path == tmp_path / "obs.ms"
    assert chain.data["readme"].path == tmp_path / "README"
    for text, said in [
        ("data: [a]\nsteps: {a: {image: x}}\n", "'data' is a list"),
        ("data: {a: a}\nsteps: {a: {image: x}}\n", "'a' names both a step and data"),
        ("data: {o: {path: x, mode: ro}}\nsteps: {a: {image: x}}\n", "unknown key(s) 'mode'"),
        ("data: {o: {}}\nsteps: {a: {image: x}}\n", "give the path of a file or folder"),
        ("data: {o: x}\nsteps: {a: {image: x, inputs: [oo]}}\n", "no such step (did you mean"),
    ]:
        with pytest.raises(ChainError, match=said.replace("(", r"\(").replace(")", r"\)")):
            write_chain(tmp_path, text)


async def test_steps_read_data_as_inputs_and_rerun_only_when_its_content_changes(
    tmp_path: Path,
) -> None:
    obs = observation(tmp_path)
    (tmp_path / "model.txt").write_text("model\n")
    settled(tmp_path / "model.txt")
    seen: dict[str, list[str]] = {}

    async def look(container: FakeContainer) -> int:
        mounts = {m.target: m.source for m in container.job.mounts}
        seen[container.job.labels["io.kliko-async.step"]] = sorted(mounts)
        root = container.path("/input")
        (container.path("/output") / "count").write_text(str(len(list(root.rglob("*")))))
        return 0

    runtime = FakeRuntime()
    runtime.add_image("split", SPLIT, look)
    runtime.add_image("join", JOIN)
    chain = write_chain(
        tmp_path,
        f"""\
        data:
          obs: {obs}
          model: model.txt
        steps:
          flag: {{image: split, inputs: [obs]}}
          both: {{image: join, inputs: [flag, model]}}
        """,
    )
    cache = tmp_path / "cache"
    first = await api.run(chain, runtime=runtime, cache_dir=cache, out=tmp_path / "out")
    assert first.ok, {n: s.reason for n, s in first.steps.items()}
    assert sorted(first.steps) == ["both", "flag"], "data are not steps"
    assert "/input" in seen["flag"]
    assert (tmp_path / "out" / "flag" / "count").read_text() == "23"  # 20 files, table/, 2 more
    assert (tmp_path / "out" / "both" / "model" / "model.txt").read_text() == "model\n"
    assert (tmp_path / "out" / "both" / "flag" / "count").is_file()

    os.utime(obs / "table" / "f1.dat")
    again = await api.run(chain, runtime=runtime, cache_dir=cache)
    assert {s.state for s in again.steps.values()} == {"cached"}, "a touch changes no key"

    (tmp_path / "model.txt").write_text("model 2\n")
    changed = await api.run(chain, runtime=runtime, cache_dir=cache)
    assert {n: s.state for n, s in changed.steps.items()} == {"flag": "cached", "both": "done"}

    obs.rename(tmp_path / "moved")
    with pytest.raises(ChainError, match=r"data 'obs': .*does not exist"):
        await api.dry_run(chain, runtime=runtime, cache_dir=cache)


async def test_keying_data_is_said_in_events_with_what_was_read(tmp_path: Path) -> None:
    obs = observation(tmp_path, files=3)
    runtime = FakeRuntime()
    runtime.add_image("split", SPLIT)
    chain = write_chain(
        tmp_path, f"data: {{obs: {obs}}}\nsteps: {{a: {{image: split, inputs: [obs]}}}}\n"
    )
    seen: list[Event] = []
    await api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache", on_event=seen.append)
    await api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache", on_event=seen.append)
    keying = [e for e in seen if isinstance(e, DataKeying)]
    keyed = [e for e in seen if isinstance(e, DataKeyed)]
    assert [e.data for e in keying] == ["obs", "obs"] and keying[0].path == str(obs)
    assert [(e.files, e.read_files) for e in keyed] == [(4, 4), (4, 0)]
    assert keyed[0].size_bytes == keyed[0].read_bytes == 3 * 1000 + 23
    assert step_message(keyed[1]) == ("obs", "data: 4 files, 3.0 kB (none read) in 0.0s")


async def test_the_same_chain_over_several_observations_is_a_list_of_data(
    tmp_path: Path,
) -> None:
    """``path:`` given a list (here a variable) makes one data input per path, read as a
    matrix step's expansions: a ``same-as`` step runs once per observation, a plain consumer
    reads them all, each in its folder; ``--set`` picks other observations."""
    for night in ("night1", "night2", "night3"):
        (tmp_path / night).mkdir()
        (tmp_path / night / "vis.dat").write_text(f"{night}\n")
    text = """\
    vars: {nights: [night1, night2]}
    data:
      obs: {path: "${vars.nights}"}
    steps:
      flag: {image: split, inputs: [obs], matrix: {same-as: obs}}
      combine: {image: split, inputs: [flag]}
      raw: {image: split, inputs: [obs]}
    """
    chain = write_chain(tmp_path, text)
    assert sorted(chain.data) == ["obs[night1]", "obs[night2]"]
    assert chain.steps["flag[night2]"].inputs == ("obs[night2]",)
    assert chain.steps["combine"].inputs == ("flag[night1]", "flag[night2]")
    assert chain.steps["raw"].inputs == ("obs[night1]", "obs[night2]")
    assert chain.steps["raw"].inputs_in_folders

    runtime = FakeRuntime()
    runtime.add_image("split", SPLIT)  # copies /input to /output
    cache = tmp_path / "cache"
    first = await api.run(chain, runtime=runtime, cache_dir=cache, out=tmp_path / "out")
    assert first.ok and (tmp_path / "out" / "flag[night2]" / "vis.dat").read_text() == "night2\n"
    assert (tmp_path / "out" / "raw" / "obs[night1]" / "vis.dat").read_text() == "night1\n"

    path = tmp_path / "chain.yaml"
    other = load_chain(path, sets={"nights": "[night2, night3]"})
    again = await api.run(other, runtime=runtime, cache_dir=cache)
    states = {name: step.state for name, step in again.steps.items()}
    assert states == {
        "flag[night2]": "cached",
        "flag[night3]": "done",
        "combine": "done",
        "raw": "done",
    }
    with pytest.raises(ChainError, match="give the path of a file or folder, or a list"):
        write_chain(tmp_path, "data: {obs: {path: [a, 3]}}\nsteps: {a: {image: x}}\n")
