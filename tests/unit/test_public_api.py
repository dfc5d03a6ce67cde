"""What an embedding application imports from ``kliko_async`` is there, and only once."""

from __future__ import annotations

import kliko_async


def test_every_promised_name_is_importable() -> None:
    missing = [name for name in kliko_async.__all__ if not hasattr(kliko_async, name)]
    assert not missing


def test_the_events_and_options_users_meet_are_promised() -> None:
    for name in ("LogLinesSkipped", "ExportStarted", "OutputExported", "Plan", "SlurmOptions"):
        assert name in kliko_async.__all__, name


def test_a_failed_step_has_one_event_and_one_record() -> None:
    """``StepFailed`` is the event, ``StepFailure`` the error's record; no alias of either."""
    event = kliko_async.StepFailed(step="s", key="k", reason="exited with code 3")
    assert event.kind == "step_failed"
    assert issubclass(kliko_async.StepFailure, kliko_async.KlikoError)
    assert not issubclass(kliko_async.StepFailed, Exception)
    assert not hasattr(kliko_async, "StepFailedEvent")
