"""Profiles: named sets of ``run`` options in a config file, so a user need not repeat them.

``$KLIKO_ASYNC_CONFIG``, else ``$XDG_CONFIG_HOME/kliko-async/config.yaml`` (or
``~/.config/kliko-async/config.yaml``)::

    default: cluster            # used when no --profile is given (optional)
    profiles:
      cluster:
        backend: slurm
        partition: compute
        slurm_opts: [--account=radio, --qos=normal]
        cache_dir: /shared/scratch/me/kliko-cache
        jobs: 64

Options given on the command line win over the profile's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kliko_async.errors import ParameterError
from kliko_async.model.inputfiles import InputFileError, read_input_file
from kliko_async.model.yamltext import YamlTextError, parse_yaml_bytes


class Profile(BaseModel):
    """The ``run`` options one profile sets; unset ones keep their defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["docker", "slurm"] | None = None
    partition: str | None = Field(None, description="Slurm partition (sbatch --partition).")
    slurm_opts: tuple[str, ...] = Field((), description="Extra sbatch options, e.g. --account=X.")
    engine: Literal["auto", "docker", "charliecloud"] | None = Field(
        None, description="How Slurm jobs run containers on the nodes."
    )
    cache_dir: Path | None = None
    jobs: int | None = Field(None, ge=1)
    slurm_max_jobs: int | None = Field(
        None, ge=1, description="At most this many Slurm jobs pending or running at once."
    )


class ConfigFile(BaseModel):
    """The config file: named profiles and the one used by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    profiles: dict[str, Profile] = {}


def config_path() -> Path:
    if explicit := os.environ.get("KLIKO_ASYNC_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kliko-async" / "config.yaml"


def load_profile(name: str | None) -> Profile:
    """The profile ``name`` (or the file's default, or none) from the config file."""
    path = config_path()
    try:
        is_file = path.is_file()
    except OSError as error:  # a folder on the way you may not look into
        raise ParameterError(
            f"cannot look at the config file: {error.strerror or error}",
            where=str(path),
            hint="Set KLIKO_ASYNC_CONFIG (or XDG_CONFIG_HOME) to a place you may read.",
        ) from None
    if not is_file:
        if name is not None:
            raise ParameterError(
                f"no config file, so there is no profile '{name}'",
                where=str(path),
                hint="Write the file with a 'profiles:' mapping (see docs/cluster.md), or set "
                "KLIKO_ASYNC_CONFIG to its path.",
            )
        return Profile()
    try:
        data = parse_yaml_bytes(read_input_file(path)) or {}
        config = ConfigFile.model_validate(data)
    except (InputFileError, YamlTextError) as error:
        raise ParameterError(
            f"cannot read the config file: it {error.message}", where=str(path), hint=error.hint
        ) from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}"
            for e in error.errors()
        )
        raise ParameterError(f"invalid config file: {problems}", where=str(path)) from None
    chosen = name or config.default
    if chosen is None:
        return Profile()
    if chosen not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none"
        raise ParameterError(
            f"no profile '{chosen}' (profiles: {known})",
            where=str(path),
            hint="Pick one of them with --profile, or add it under 'profiles:'.",
        )
    return config.profiles[chosen]
