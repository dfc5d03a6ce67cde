"""What a forced exit says it leaves behind (the second Ctrl-C prints it)."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.inflight import (
    InFlight,
    describe_left_behind,
    left_behind,
    under_way,
    writing_into,
)


def test_only_what_is_under_way_and_exists_is_listed(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with (
        under_way(InFlight("step a", container_id="0123456789abcdef")),
        under_way(InFlight("staging folder of step a", folder=staging)),
        under_way(InFlight("never made", folder=tmp_path / "absent")),
    ):
        inside = left_behind()
    assert [i.what for i in inside] == ["step a", "staging folder of step a"]
    assert left_behind() == [], "each is untracked once its block ends"


def test_the_message_names_each_item_and_how_it_is_removed(tmp_path: Path) -> None:
    items = [
        InFlight("step a", container_id="0123456789abcdef"),
        InFlight("staging folder of step a", folder=tmp_path / "s"),
    ]
    text = describe_left_behind(items)

    assert "container 0123456789ab (step a)" in text
    assert f"folder {tmp_path / 's'} (staging folder of step a)" in text
    assert "the next 'kliko-async run' on this host removes them" in text
    assert f"docker rm -f 0123456789ab; rm -rf {tmp_path / 's'}" in text


def test_what_no_run_removes_is_told_apart(tmp_path: Path) -> None:
    items = [
        InFlight("step run-image", container_id="0123456789abcdef"),
        InFlight("run-image's parameters", folder=tmp_path / "p", next_run_removes=False),
    ]
    text = describe_left_behind(items)

    assert "the next 'kliko-async run' on this host removes container 0123456789ab" in text
    assert describe_left_behind([]) == "nothing was left behind"


def test_slurm_jobs_left_behind_are_named_with_the_command_that_cancels_them() -> None:
    items = [
        InFlight("step a, not cancelled, scancel failed: no", job_id="745"),
        InFlight("step b, not cancelled, scancel failed: no", job_id="746_0"),
    ]
    text = describe_left_behind(items)

    assert "Slurm job 745 (step a, not cancelled, scancel failed: no)" in text
    assert "Slurm job 746_0 (step b" in text
    assert "or remove them now: scancel 745 746_0" in text


def test_a_job_known_by_name_only_is_named_with_the_command_that_cancels_it() -> None:
    item = InFlight("step a: its sbatch was stopped", job_name="kliko-r1-a")
    text = describe_left_behind([item])

    assert "any Slurm job named kliko-r1-a (step a: its sbatch was stopped)" in text
    assert "or remove them now: scancel --name=kliko-r1-a" in text


def test_a_folder_a_job_left_running_writes_into_is_said_kept(tmp_path: Path) -> None:
    staging, other = tmp_path / "tmp" / "k.1.x", tmp_path / "tmp" / "k.2.x"
    job = InFlight("step a, not cancelled", job_id="745", writes_into=(staging / "scratch",))
    with under_way(job):
        assert writing_into(staging) == [job]
        assert writing_into(staging / "scratch" / "slurm") == [job]
        assert writing_into(other) == []
    alone = describe_left_behind([job])
    kept = InFlight("staging folder of step a, kept", folder=staging)
    both = describe_left_behind([job, kept])

    said = f"Slurm job 745 (step a, not cancelled); it may still write into {staging / 'scratch'}"
    assert said in alone
    assert f"scancel 745; rm -rf {staging / 'scratch'}" in alone
    assert "Slurm job 745 (step a, not cancelled)\n" in both  # its folder is listed on its own
    assert f"scancel 745; rm -rf {staging}" in both
