"""How a ContainerJob becomes a Docker Engine create request (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.base import ContainerJob, Mount
from kliko_async.runtime.dockerfiles import container_config


def test_a_job_becomes_an_unprivileged_container_with_its_mounts_limits_and_labels() -> None:
    job = ContainerJob(
        image="sha256:" + "a" * 64,
        command=("/kliko",),
        mounts=(
            Mount(
                source=Path("/cache/tmp/k/parameters.json"),
                target="/parameters.json",
                read_only=True,
            ),
            Mount(source=Path("/cache/tmp/k/output"), target="/output"),
        ),
        env={"OMP_NUM_THREADS": "1"},
        user="1000:1000",
        labels={"io.kliko-async.step": "gen"},
        cpus=1.5,
        memory=512 << 20,
        gpus=2,
    )

    config = container_config(job)

    host = config["HostConfig"]
    assert host["Mounts"] == [
        {
            "Type": "bind",
            "Source": "/cache/tmp/k/parameters.json",
            "Target": "/parameters.json",
            "ReadOnly": True,
        },
        {"Type": "bind", "Source": "/cache/tmp/k/output", "Target": "/output", "ReadOnly": False},
    ]
    assert "Binds" not in host, "Binds would split a path holding ':'"
    assert host["Privileged"] is False
    assert host["LogConfig"]["Type"] == "local", "the log driver that keeps the bytes written"
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemorySwap"] == 512 << 20
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]
    assert config["User"] == "1000:1000"
    assert config["Env"] == ["OMP_NUM_THREADS=1"]
    assert config["Labels"] == {"io.kliko-async.managed": "1", "io.kliko-async.step": "gen"}
    assert config["Cmd"] == ["/kliko"]  # as Kliko 0.8: /kliko, whatever the image's CMD
    assert "Entrypoint" not in config  # the image's ENTRYPOINT is kept, as Kliko 0.8 keeps it


def test_no_limits_means_no_limit_keys() -> None:
    config = container_config(ContainerJob(image="sha256:" + "b" * 64))

    assert not {"NanoCpus", "Memory", "DeviceRequests"} & set(config["HostConfig"])
