"""The batch script of one Slurm job: run one Kliko container on the node, and say how it ended.

On the node the container runs with ``docker run`` when a Docker Engine answers there, else with
Charliecloud's ``ch-run`` on the image converted into the cache (``engine="auto"``), with the
same mounts, user, environment, labels (Docker only) and command as the local runtime. Its
stdout and stderr go to files in the job's folder (``stdout``, ``stderr``; ``stdout.N`` and
``stderr.N`` after the Nth requeue), which the submitting process follows; ``started`` says the
node and the attempt. At the end the script writes ``status`` (``<exit code> <oom killed>
<engine>``) with one rename. It stops the container itself at its time limit, and on SIGTERM
(scancel, a requeue) before it exits. An attempt after a requeue starts with an empty /output.
While the container runs, the script measures what it uses (``usage``; see ``usage.py``). The
script starts as few processes as it can beside the container's: on a busy node every one
costs, and a 200-way matrix starts 200 of these scripts.

``ch-run`` 0.31 binds read-write only, so under Charliecloud every read-only mount (the step's
inputs, which are cache entries, and its parameters) is given as a copy in the job's folder,
made just before the container starts and deleted after it: a reflink where the filesystem
allows (``cp --reflink=auto``: no time or space for a large Measurement Set on XFS or Btrfs),
else a plain copy; never a hard link, which would share the entry's bytes.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

from kliko_async.errors import ContainerError
from kliko_async.model.chainmodel import numeric_user
from kliko_async.runtime.base import KLIKO_EXECUTABLE, LABEL_PREFIX, OWNER_LABEL, ContainerJob

Engine = Literal["auto", "docker", "charliecloud"]

DEFAULT_COMMAND = (KLIKO_EXECUTABLE,)

TIMEOUT_EXIT = 124
"""The status the script reports when it stopped the container at its time limit."""

REQUEUED_EXIT = 96
"""The status of a requeued job whose container works in /work (join IO): its first attempt
may have changed the copy of its inputs, so it is not run again (the step fails, and is
retried afresh where it has retries)."""

UNSEEN_EXIT = 97
"""The job's exit code when the node cannot see the job's folder (no shared filesystem)."""


def job_script(
    job: ContainerJob,
    *,
    folder: Path,
    image_dir: Path | None,
    engine: Engine,
    limit: float | None,
) -> str:
    """The script for ``job``. ``image_dir``: its Charliecloud image (None: Docker only);
    ``limit``: seconds after which the container is stopped (None: no limit)."""
    docker = _shell(docker_command(job))
    charliecloud = (
        _shell(charliecloud_command(job, image_dir, folder)) if image_dir is not None else "false"
    )
    pick = {
        "auto": "if docker version >/dev/null 2>&1; then engine=docker; else engine=ch-run; fi",
        "docker": "engine=docker",
        "charliecloud": "engine=ch-run",
    }[engine]
    inputs = mount_points(job, folder)
    output = next((m.source for m in job.mounts if m.target == "/output"), None)
    work = next((m.source for m in job.mounts if m.target == "/work"), None)
    return _TEMPLATE.format(
        folder=shlex.quote(str(folder)),
        output=shlex.quote(str(output or "")),
        work=shlex.quote(str(work or "")),
        requeued_exit=REQUEUED_EXIT,
        unseen=UNSEEN_EXIT,
        timeout_exit=TIMEOUT_EXIT,
        pick=pick,
        docker=docker,
        charliecloud=charliecloud,
        inputs=inputs,
        copies_dir=COPIES,
        copies=copy_commands(job, folder),
        limit=f"{limit:.3f}" if limit is not None else "",
        cpus=_CPUS.replace("{want}", f"{job.cpus:g}") if job.cpus is not None else "",
        memory=job.memory or "",
        meter=METER,
    )


_CPUS = """\
CPUS=$(awk -v want={want} -v have="$(nproc --all)" 'BEGIN { print (want < have) ? want : have }')
"""
"""The job's CPUs, at most the node's (``docker run --cpus`` refuses more); only when asked."""

_SHELL_WORDS = {
    "$CNAME": '"$CNAME"',
    "USER=$USER": '"USER=$USER"',
    "$CPUS": '"$CPUS"',
    f"{OWNER_LABEL}=slurm:$SLURM_JOB_ID": f'"{OWNER_LABEL}=slurm:$SLURM_JOB_ID"',
    "$dir/cid": '"$dir/cid"',
}
"""Words the script must expand itself (the container's name, the user's name)."""


def _shell(args: list[str]) -> str:
    return " ".join(_SHELL_WORDS.get(a) or shlex.quote(a) for a in args)


def docker_command(job: ContainerJob) -> list[str]:
    """``docker run`` for ``job``, as ``runtime/docker.py`` configures the container."""
    args = ["docker", "run", "--name", "$CNAME", "--network", "bridge", "--init=false"]
    args += ["--cidfile", "$dir/cid"]  # the container's ID, by which its usage is measured
    if job.memory is None:  # nothing to ask the engine afterwards (was it out of memory?)
        args.append("--rm")
    labels = {f"{LABEL_PREFIX}.managed": "1", **job.labels}
    if OWNER_LABEL in labels:  # the container is the job's: no local run may reap it as its own
        labels[f"{LABEL_PREFIX}.submitter"] = labels[OWNER_LABEL]
        labels[OWNER_LABEL] = "slurm:$SLURM_JOB_ID"
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    for mount in job.mounts:
        args += ["-v", f"{mount.source}:{mount.target}:{'ro' if mount.read_only else 'rw'}"]
    for key, value in job.env.items():
        args += ["-e", f"{key}={value}"]
    if job.user is not None:
        args += ["--user", job.user]
    if job.memory is not None:
        args += ["--memory", str(job.memory), "--memory-swap", str(job.memory)]
    if job.cpus is not None:
        args += ["--cpus", "$CPUS"]  # the job's, at most the node's (Docker refuses more)
    if job.gpus:
        args += ["--gpus", str(job.gpus)]
    if job.workdir is not None:
        args += ["--workdir", job.workdir]
    return [*args, job.image, *(job.command or DEFAULT_COMMAND)]


COPIES = "read-only-copies"
"""The folder (in the job's) of the copies that ``ch-run`` binds in place of read-only mounts."""


def mount_points(job: ContainerJob, folder: Path) -> str:
    """Shell commands that make the mount points under ``/input`` for ``ch-run`` (which binds
    only onto what exists): a folder per input folder, an empty file per data file."""
    commands = []
    for mount in job.mounts:
        if not mount.target.startswith("/input/"):
            continue
        point = folder / "input" / mount.target.removeprefix("/input/")
        if mount.source.is_file():
            commands.append(_shell(["mkdir", "-p", str(point.parent)]))
            commands.append(_shell(["touch", str(point)]))
        else:
            commands.append(_shell(["mkdir", "-p", str(point)]))
    return "\n".join(commands)


def read_only_copies(job: ContainerJob, folder: Path) -> dict[str, str]:
    """Source -> copy of every read-only mount of ``job``, for ``ch-run`` to bind instead."""
    return {
        str(m.source): str(folder / COPIES / str(n))
        for n, m in enumerate(job.mounts)
        if m.read_only
    }


def copy_commands(job: ContainerJob, folder: Path) -> str:
    """Shell commands that make :func:`read_only_copies`: reflinks where the filesystem allows,
    else full copies (never hard links), keeping modes, times and links as they are."""
    copies = [
        _shell(["cp", "-R", "-P", "--preserve=mode,timestamps", "--reflink=auto", src, dst])
        for src, dst in read_only_copies(job, folder).items()
    ]
    return " && ".join([_shell(["mkdir", "-p", str(folder / COPIES)]), *copies])


def charliecloud_command(job: ContainerJob, image_dir: Path | None, folder: Path) -> list[str]:
    """``ch-run`` for ``job`` on its converted image, with a clean environment like Docker's.

    Charliecloud 0.31 binds read-write only: a read-only mount is bound as its copy (see
    :func:`read_only_copies`), so the container can never change a cache entry, as any user.
    """
    assert image_dir is not None
    args = ["env", "-i", "USER=$USER", "PATH=/usr/bin:/bin", "ch-run", "--no-passwd", "-t"]
    args += ["--set-env", f"--set-env={folder / 'env'}"]
    found = numeric_user(job.user or "")
    if found:
        args += ["--uid", str(found[0])]
        if found[1] is not None:
            args += ["--gid", str(found[1])]
    if any(m.target.startswith("/input/") for m in job.mounts):
        args += ["-b", f"{folder / 'input'}:/input"]  # mount points for /input/<step>
    copies = read_only_copies(job, folder)
    for mount in job.mounts:
        source = copies[str(mount.source)] if mount.read_only else mount.source
        args += ["-b", f"{source}:{mount.target}"]
    if job.workdir is not None:
        args += ["--cd", job.workdir]
    return [*args, str(image_dir), "--", *(job.command or DEFAULT_COMMAND)]


def env_file(job: ContainerJob) -> str:
    """The job's environment as ``ch-run --set-env`` reads it: one KEY=VALUE per line."""
    bad = [key for key, value in job.env.items() if "\n" in value or "\n" in key]
    if bad:
        raise ContainerError(
            f"the environment variable {bad[0]!r} holds a newline, which ch-run cannot pass"
        )
    return "".join(f"{key}={value}\n" for key, value in job.env.items())


METER = r"""meter() { # what the container uses, into $dir/usage: <cpu ns|-> <peak> <samples>
    # Docker: the container's own cgroup counters (v1 or v2; the peak is the kernel's own
    # high-water mark where it keeps one). ch-run: the container's processes are this job's:
    # the peak is the sum of their own high-water marks (VmHWM) as sampled, the CPU time comes
    # from 'times' (exact).
    local n=0 peak=0 cpu=- mem= acct= id= d= value= key= pause=0.25 tick
    exec {tick}<> <(:) # a pipe that never has data: 'read -t' on it sleeps without a process
    while kill -0 "$1" 2>/dev/null; do
        if [ "$engine" = docker ] && [ -z "$mem" ] && [ -s "$dir/cid" ]; then
            read -r id <"$dir/cid"
            for d in "memory/docker/$id" "memory/system.slice/docker-$id.scope" \
                "system.slice/docker-$id.scope" "docker/$id"; do
                [ -d "/sys/fs/cgroup/$d" ] || continue
                case $d in
                memory/*)
                    mem="/sys/fs/cgroup/$d/memory.max_usage_in_bytes"
                    acct="/sys/fs/cgroup/cpuacct/${d#memory/}/cpuacct.usage" ;;
                *)
                    mem="/sys/fs/cgroup/$d/memory.peak"
                    [ -f "$mem" ] || mem="/sys/fs/cgroup/$d/memory.current"
                    acct="/sys/fs/cgroup/$d/cpu.stat" ;;
                esac
                break
            done
        fi
        value=
        if [ -n "$mem" ]; then
            read -r value <"$mem" || break # the container's cgroup is gone: it ended
            case $acct in
            *.usage) read -r cpu <"$acct" ;;
            *) while read -r key d; do [ "$key" = usage_usec ] && cpu=$((d * 1000)); done \
                <"$acct" ;;
            esac
        elif [ "$engine" != docker ]; then
            value=$(ps -e -o pid=,ppid= | awk -v root="$1" '
                { up[$1] = $2 }
                END { for (p in up) { q = p; while (q in up && q != root && q > 1) q = up[q]
                      if (q != root) continue; f = "/proc/" p "/status"
                      while ((getline line < f) > 0) if (line ~ /^VmHWM:/) { split(line, w)
                          total += w[2] }
                      close(f) }
                      print total * 1024 }')
        fi
        if [ -n "$value" ] && [ "$value" -ge 0 ] 2>/dev/null; then
            [ "$value" -gt "$peak" ] && peak=$value
            n=$((n + 1))
            printf '%s %s %s\n' "${cpu:--}" "$peak" "$n" >"$dir/usage"
        fi
        read -r -t "$pause" -u "$tick" d
        [ "$n" -ge 4 ] && pause=1 # a short step is sampled often, a long one once a second
    done
}"""

_TEMPLATE = """\
#!/bin/bash
# A kliko-async step, submitted by runtime/slurm/runtime.py: run one Kliko container on this node.
dir={folder}
[ -f "$dir/job.sh" ] || {{ echo "cannot see $dir on $(hostname)" >&2; exit {unseen}; }}
cd "$dir" || exit {unseen}
CNAME="kliko-slurm-$SLURM_JOB_ID"
{cpus}export USER="${{USER:-$(id -un)}}"
{pick}
attempt=${{SLURM_RESTART_COUNT:-0}}
logs=
if [ "$attempt" -gt 0 ]; then # requeued by Slurm: this attempt starts clean
    logs=".$attempt"
    rm -f "$dir/timed-out" "$dir/status" "$dir/cid" "$dir/usage" "$dir/times.before"
    if [ -n {work} ]; then # /work began as a copy of the inputs: it cannot be made afresh here
        printf '%s false requeued\n' {requeued_exit} >"$dir/status.tmp"
        mv "$dir/status.tmp" "$dir/status"
        exit {requeued_exit}
    fi
    [ -n {output} ] && find {output} -mindepth 1 -delete
fi
# One short write, read as "not started yet" while empty: no rename (a process) needed.
printf '%s %s\n' "${{SLURMD_NODENAME:-$(hostname)}}" "$attempt" >"$dir/started"
pid=
finish() {{
    printf '%s %s %s\\n' "$1" "$2" "$engine" >"$dir/status.tmp" &&
        mv "$dir/status.tmp" "$dir/status"
}}
stop() {{ # the container, wherever it runs; the scancel/time limit path
    if [ "$engine" = docker ]; then
        # The engine may finish creating the container after its client was signalled: remove
        # it until it stays gone.
        local gone=0
        for _ in $(seq 40); do
            docker rm -f "$CNAME" >/dev/null 2>&1
            gone=$((gone + 1))
            docker container inspect "$CNAME" >/dev/null 2>&1 && gone=0
            [ "$gone" -ge 2 ] && ! kill -0 "$pid" 2>/dev/null && break
            sleep 0.25
        done
    elif [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null; sleep 2; kill -KILL "$pid" 2>/dev/null
    fi
}}
on_signal() {{ trap - TERM INT; stop; exit 143; }}
trap on_signal TERM INT
{inputs}
drop_copies() {{ # what the container made of them may be read-only: opened for removal first
    [ -e "$dir/{copies_dir}" ] || return 0
    chmod -R u+rwX "$dir/{copies_dir}"; rm -rf "$dir/{copies_dir}"
}}
{meter}
if [ "$engine" = docker ]; then
    {docker} >"$dir/stdout$logs" 2>"$dir/stderr$logs" </dev/null &
else
    # ch-run binds read-write only: read-only mounts (cache entries) are given as copies.
    drop_copies 2>/dev/null
    if ! {{ {copies}; }} 2>"$dir/stderr$logs"; then
        echo "kliko-async: could not copy the read-only inputs for ch-run" >>"$dir/stderr$logs"
        drop_copies 2>/dev/null; finish 1 false; exit 1
    fi
    times >"$dir/times.before"
    {charliecloud} >"$dir/stdout$logs" 2>"$dir/stderr$logs" </dev/null &
fi
pid=$!
meter "$pid" 2>/dev/null &
meter_pid=$!
watchdog=
if [ -n "{limit}" ]; then
    (sleep {limit}; touch "$dir/timed-out"; stop) &
    watchdog=$!
fi
wait "$pid"
code=$?
times >"$dir/times.after" # the container's CPU under ch-run (its processes were this shell's)
kill "$meter_pid" 2>/dev/null
[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
[ "$engine" = docker ] || drop_copies 2>/dev/null
oom=false
if [ "$engine" = docker ] && [ -n "{memory}" ]; then
    oom=$(docker inspect --format '{{{{.State.OOMKilled}}}}' "$CNAME" 2>/dev/null || echo false)
    docker rm -f "$CNAME" >/dev/null 2>&1
fi
[ -f "$dir/timed-out" ] && code={timeout_exit}
finish "$code" "$oom"
exit "$code"
"""
