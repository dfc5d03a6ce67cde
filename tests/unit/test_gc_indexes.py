"""``cache gc`` also bounds the small indexes every run reads whole: the past durations (for the
ETA) and the remembered digests of data files. Both grew by everything ever run or keyed."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from test_cache import NOW, key_of, manifest_for, stage_files
from test_data_inputs import observation, settled

from kliko_async.cache.datahash import STAT_CACHE, StatCache, digest_data
from kliko_async.cache.durations import DURATIONS, past_durations_of, record_durations
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import gc


def test_gc_forgets_the_durations_of_steps_no_entry_is_left_of(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    for n, step, age in ((1, "old-sweep", 10), (2, "today", 0)):
        staging = stage_files(cache, key_of(n), {"a": b"x"})
        cache.publish(
            staging, manifest_for(key_of(n), step=step, finished_at=NOW - timedelta(days=age))
        )
    image = "kliko/wsclean:1.0"
    record_durations(
        cache, {("old-sweep", image): 3.0, ("today", image): 3.0, ("gone", image): 1.0}
    )

    removed = gc(cache, older_than=timedelta(days=3), now=NOW)

    assert [e.manifest.step for e in removed] == ["old-sweep"]
    assert removed.durations == 2
    assert json.loads((cache.root / DURATIONS).read_text()) == {"today": {image: 3.0}}
    assert past_durations_of(cache, [("today", image)]) == {("today", image): 3.0}
    assert gc(cache, older_than=timedelta(days=3), now=NOW).durations == 0


def test_gc_forgets_the_digests_of_data_files_gone_or_changed(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.root.mkdir()
    obs = observation(tmp_path, files=5)
    digest_data(obs, stats := StatCache(cache.root / STAT_CACHE))
    stats.save()
    (obs / "table" / "f1.dat").unlink()
    (obs / "table" / "f2.dat").write_bytes(b"changed")
    settled(obs / "table" / "f2.dat")

    removed = gc(cache, older_than=timedelta(days=3), now=NOW)

    assert removed.data_digests == 2
    known = json.loads((cache.root / STAT_CACHE).read_text())["files"]
    assert sorted(os.path.basename(path) for path in known) == [
        "f0.dat", "f3.dat", "f4.dat", "table.info"
    ]  # fmt: skip
    again = digest_data(obs, StatCache(cache.root / STAT_CACHE))
    assert again.hashed_files == 1, "only the changed file is read again"
