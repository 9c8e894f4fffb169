"""Cluster profiles: where and how jobs run, read from configs/clusters/<name>.yaml.

A profile is operator-owned configuration (trusted), but every value still passes a
strict character check because it is written into #SBATCH lines and shell scripts.
Per-key overrides (the caller picks the key, e.g. a model name) let one profile give
bigger jobs more nodes without this package knowing what the jobs are.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTERS_DIR_ENV = "LORA_REGRET_CLUSTERS_DIR"

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:,=+@%/-]{1,256}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")


def _check(pattern: re.Pattern[str], what: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value) or value.startswith("-"):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return check


Token = Annotated[str, AfterValidator(_check(_TOKEN_RE, "value (letters, digits, _.:,=+@%/-)"))]
Name = Annotated[str, AfterValidator(_check(_NAME_RE, "name (letters, digits, _.-)"))]
EnvName = Annotated[str, AfterValidator(_check(_ENV_NAME_RE, "environment variable name"))]
TimeLimit = Annotated[str, AfterValidator(_check(_TIME_RE, "time limit ([D-]HH:MM:SS)"))]
Memory = Annotated[str, AfterValidator(_check(_MEM_RE, "memory size (e.g. 64G)"))]


class Resources(BaseModel):
    """What one job asks the scheduler for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int = Field(default=1, ge=1, le=4096)
    tasks_per_node: int = Field(default=1, ge=1, le=1024)
    gpus_per_node: int = Field(default=0, ge=0, le=64)
    workers_per_node: int | None = Field(
        default=None, ge=1, le=1024,
        description="Processes torchrun starts per node (default: gpus_per_node, at least 1).")
    cpus_per_task: int | None = Field(default=None, ge=1, le=1024)
    mem: Memory | None = None
    time_limit: TimeLimit = "01:00:00"
    # Settings the caller applies to the job itself (e.g. a DeepSpeed stage); opaque here.
    job_settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def workers(self) -> int:
        return self.workers_per_node or max(self.gpus_per_node, 1)

    @property
    def time_limit_seconds(self) -> int:
        """SLURM's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
        days, _, rest = self.time_limit.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if days:
            hours, minutes, seconds = (parts + [0, 0])[:3]
            return int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
        if len(parts) == 1:
            return parts[0] * 60
        if len(parts) == 2:
            return parts[0] * 60 + parts[1]
        return parts[0] * 3600 + parts[1] * 60 + parts[2]


class ResourceRequest(BaseModel):
    """What one job may ask for beyond its profile (values checked like the profile's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int | None = Field(default=None, ge=1, le=4096)
    gpus_per_node: int | None = Field(default=None, ge=0, le=64)
    workers_per_node: int | None = Field(default=None, ge=1, le=1024)
    mem: Memory | None = None
    time_limit: TimeLimit | None = None


class ClusterProfile(BaseModel):
    """One cluster: backend, scheduler options, job environment, per-key overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    backend: Literal["local", "slurm"]
    description: str = ""
    ssh_conn_id: Name | None = Field(
        default=None, description="Airflow SSH connection to the login node (slurm only)."
    )
    partition: Token | None = None
    account: Token | None = None
    qos: Token | None = None
    environment: Token | None = Field(
        default=None, description="Container engine environment (srun --environment=...)."
    )
    launcher: Literal["none", "srun", "torchrun"] = "none"
    work_dir: Token = Field(
        default=".state/jobs",
        description="Folder (on the cluster) holding one folder per job. Relative paths are "
        "relative to the repository (local) or the login directory (slurm).",
    )
    outputs_dir: Token = Field(
        default=".state/runs",
        description="Where jobs write checkpoints: absolute, or relative to chdir.",
    )
    chdir: Token | None = Field(
        default=None,
        description="Folder the command runs in (default: the job's folder). Relative paths "
        "are relative to the repository (local) or $HOME (slurm).",
    )
    python: Token | None = Field(
        default=None, description="Python on the cluster; None: the Python running Airflow."
    )
    max_parallel_jobs: int | None = Field(
        default=None, ge=1, le=1024,
        description="Local backend: jobs running at once; the rest wait as PENDING (a machine "
        "with few cores trains faster one job at a time). None: no limit.",
    )
    setup: tuple[str, ...] = Field(
        default=(), description="Shell lines run before the command (module load, activate)."
    )
    env: dict[EnvName, str] = Field(default_factory=dict)
    pass_env: tuple[EnvName, ...] = Field(
        default=("MLFLOW_TRACKING_URI",),
        description="Variables copied from the submitting side's environment into the job.",
    )
    sbatch_options: tuple[Token, ...] = ()
    poll_interval: float = Field(default=30.0, gt=0, le=3600)
    resources: Resources = Resources()
    overrides: dict[Name, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterProfile:
        if self.backend == "slurm" and not self.ssh_conn_id:
            raise ValueError("ssh_conn_id: required for a slurm profile")
        if self.backend == "local" and self.launcher != "none":
            raise ValueError("launcher: the local backend runs commands directly ('none')")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ValueError("setup: one shell line per entry")
        for key in self.overrides:  # fail at load time, not at submit time
            try:
                self.resources_for(key)
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"overrides.{key}.{field}: {first['msg']}") from None
        return self

    def resources_for(self, key: str | None,
                      request: ResourceRequest | None = None) -> Resources:
        """The profile's resources with the override for ``key`` (if any) applied, then
        the request's own layout (an engineering sweep's nodes and GPUs)."""
        merged = self.resources.model_dump()
        if key is not None and key in self.overrides:
            merged.update(self.overrides[key])
        if request is not None:
            merged.update(request.model_dump(exclude_none=True))
        if merged == self.resources.model_dump():
            return self.resources
        return Resources.model_validate(merged)

    def python_executable(self) -> str:
        return self.python or sys.executable

    def local_path(self, value: str) -> Path:
        """A local backend folder: relative paths are relative to the repository."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path


class ProfileError(ValueError):
    """A profile that is missing or invalid; the message names the field."""


def clusters_dir() -> Path:
    return Path(os.environ.get(CLUSTERS_DIR_ENV) or REPO_ROOT / "configs" / "clusters")


def profile_names() -> list[str]:
    return sorted(p.stem for p in clusters_dir().glob("*.yaml"))


def load_profile(name: str) -> ClusterProfile:
    """configs/clusters/<name>.yaml (or $LORA_REGRET_CLUSTERS_DIR/<name>.yaml)."""
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(f"cluster: {name!r} is not a profile name")
    path = clusters_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"cluster: unknown profile {name!r}; known: {', '.join(profile_names())}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    return parse_profile({"name": name, **raw})


def parse_profile(raw: dict[str, Any]) -> ClusterProfile:
    try:
        return ClusterProfile.model_validate(raw)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            field = ".".join(str(p) for p in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{field}: {message}" if field else message)
        raise ProfileError(f"invalid cluster profile {raw.get('name')!r}:\n" +
                           "\n".join(lines)) from None
