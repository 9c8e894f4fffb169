"""Cluster profiles: where and how jobs run, read from configs/clusters/<name>.yaml.

A profile is operator-owned configuration (trusted), but every value still passes a
strict character check because it is written into #SBATCH lines and shell scripts.
Per-key overrides (the caller picks the key, e.g. a model name) let one profile give
bigger jobs more nodes without the job backends knowing what the jobs are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.errors import SpecError, describe_errors
from contracts.paths import configs_dir, project_root
from contracts.safe import SAFE_NAME_RE, EnvName, Memory, TimeLimit, Token
from contracts.safe import SafeName as Name

CLUSTERS_DIR_ENV = "LORA_REGRET_CLUSTERS_DIR"


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
    gpu_memory_gb: float | None = Field(
        default=None, gt=0, le=100_000,
        description="Memory of one GPU (GB, as sold): what the memory plan checks each "
                    "layout against before submitting (None: no check).")
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
    data_roots: tuple[Token, ...] = Field(
        default=(),
        description="Folders under which an absolute data path from a trigger form may lie "
        "(absolute, or relative to the repository for the local backend). Relative paths "
        "are read in the job's folder (chdir) and may not climb out ('..').",
    )
    max_nodes: int = Field(default=64, ge=1, le=4096,
                           description="Most nodes one job may ask for.")
    max_gpus_per_node: int = Field(default=8, ge=0, le=64,
                                   description="Most GPUs per node one job may ask for.")
    sbatch_options: tuple[Token, ...] = ()
    poll_interval: float = Field(
        default=30.0, gt=0, le=3600,
        description="Seconds between state queries; one query covers every job sensed on the "
        "cluster (all its job ids at once, over one SSH connection).")
    outage_budget_s: float = Field(
        default=3600.0, gt=0, le=7 * 86400,
        description="How long sensing waits through an SSH or scheduler outage (seconds) "
        "before it fails the task naming the job id; the retry (or a clear) re-attaches "
        "to the job, which kept running.")
    max_jobs_per_sweep: int | None = Field(
        default=None, ge=1, le=100_000,
        description="Most jobs of one sweep on the cluster at once: each training job waits "
        "(SLURM --dependency=afterany, locally the same) for the one this many places before "
        "it, so at most this many run at once. None: all run as the scheduler allows.")
    resources: Resources = Resources()
    overrides: dict[Name, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterProfile:
        if self.backend == "slurm" and not self.ssh_conn_id:
            raise ValueError("ssh_conn_id: required for a slurm profile")
        if self.backend == "local" and self.launcher not in ("none", "torchrun"):
            raise ValueError("launcher: the local backend runs commands directly ('none') "
                             "or as several processes of one machine ('torchrun')")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ValueError("setup: one shell line per entry")
        for key in self.overrides:  # fail at load time, not at submit time
            try:
                self.resources_for(key)
            except ValidationError as error:
                first = describe_errors(error).splitlines()[0]
                raise ValueError(f"overrides.{key}.{first}") from None
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

    def check_form_path(self, value: str, field: str) -> str:
        """A data path from a trigger form: ``synthetic``, ``hub:...``, a relative path
        that stays inside the job's folder, or an absolute one under ``data_roots``."""
        if value == "synthetic" or value.startswith("hub:"):
            return value
        path = PurePosixPath(value)
        if ".." in path.parts or any(p.startswith(".") for p in path.parts if p != "."):
            raise SpecError(f"{field}: {value!r} may not contain '..' or name hidden files "
                            "or folders")
        if path.is_absolute():
            roots = [PurePosixPath(os.path.normpath(self._root(r))) for r in self.data_roots]
            if not any(root == path or root in path.parents for root in roots):
                where = ", ".join(map(str, roots)) or "none configured"
                raise SpecError(
                    f"{field}: {value!r} is outside the data folders of cluster profile "
                    f"{self.name!r} ({where}); give a path under one of them, or relative "
                    "to the job's folder")
        return value

    def _root(self, root: str) -> str:
        return str(self.local_path(root)) if self.backend == "local" else root

    def python_executable(self) -> str:
        return self.python or sys.executable

    def local_path(self, value: str) -> Path:
        """A local backend folder: relative paths are relative to the repository."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else project_root() / path


class ProfileError(SpecError):
    """A profile that is missing or invalid; the message names the field."""


def clusters_dir() -> Path:
    return Path(os.environ.get(CLUSTERS_DIR_ENV) or configs_dir() / "clusters")


def profile_names() -> list[str]:
    return sorted(p.stem for p in clusters_dir().glob("*.yaml"))


def load_profile(name: str) -> ClusterProfile:
    """configs/clusters/<name>.yaml (or $LORA_REGRET_CLUSTERS_DIR/<name>.yaml)."""
    if not SAFE_NAME_RE.fullmatch(name):
        raise ProfileError(f"cluster: {name!r} is not a profile name")
    path = clusters_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"cluster: unknown profile {name!r}; known: {', '.join(profile_names())}"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ProfileError(f"cluster: {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"cluster: {path} must hold a mapping of settings")
    return parse_profile({"name": name, **raw})


def parse_profile(raw: dict[str, Any]) -> ClusterProfile:
    try:
        return ClusterProfile.model_validate(raw)
    except ValidationError as error:
        raise ProfileError(f"invalid cluster profile {raw.get('name')!r}:\n"
                           + describe_errors(error)) from None
