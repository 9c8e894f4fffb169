"""A job request: what the DAGs ask a cluster backend to run (``cluster_jobs`` runs it).

The request is generic (a command line, environment, small files beside it); values in it
may come from an untrusted trigger form, so names and paths pass character checks here and
every value is shell-quoted where the script is rendered.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contracts.profiles import ResourceRequest
from contracts.safe import Arg, EnvName, SafeName
from contracts.safe import FileName as _SafeFileName

JOB_ID_PLACEHOLDER = "{job_id}"
"""An argv element equal to this is replaced by the job's id when the job runs."""
JOB_DIR_PLACEHOLDER = "{job_dir}"
"""An argv element starting with this has it replaced by the job's folder (absolute)."""

# Files the backends write into every job folder.
LOG_FILE = "job.log"
EXIT_CODE_FILE = "exit_code"
SCRIPT_FILE = "job.sh"
JOB_ID_FILE = "job_id"
RESERVED_FILES = frozenset({LOG_FILE, EXIT_CODE_FILE, SCRIPT_FILE, JOB_ID_FILE})


def _not_reserved(value: str) -> str:
    if value in RESERVED_FILES:
        raise ValueError(f"{value!r} is a file name the job backend uses itself")
    return value


JobFileName = Annotated[_SafeFileName, AfterValidator(_not_reserved)]


class JobRequest(BaseModel):
    """One job: what to run, in which environment, with which files beside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SafeName = Field(description="Scheduler job name (shown in squeue).")
    argv: tuple[Arg, ...] = Field(min_length=1)
    env: dict[EnvName, Arg] = Field(default_factory=dict)
    files: dict[JobFileName, Arg] = Field(
        default_factory=dict, description="Small text files written into the job folder."
    )
    resources_key: SafeName | None = Field(
        default=None, description="Picks the profile's per-key resource override."
    )
    resources: ResourceRequest | None = Field(
        default=None, description="This job's own layout, over the profile and key override."
    )
    key: SafeName | None = Field(
        default=None,
        description="Idempotency key: one job folder per key; submitting a key again "
        "re-attaches to its job. The operator derives it from the task instance.",
    )
    after: tuple[SafeName, ...] = Field(
        default=(),
        description="Keys of jobs this one waits for (whatever their outcome): SLURM "
        "--dependency=afterany, the local backend the same.",
    )
    claim: SafeName | None = Field(
        default=None,
        description="What the job produces, once (a training spec's hash): at most one job "
        "per claim runs whatever its key, so a second trigger of the same sweep, even at "
        "the same moment, re-attaches to the job that holds the claim while it runs or if "
        "it succeeded.",
    )


def task_key(name: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """A stable, filesystem- and shell-safe job key for one task instance (not one try):
    a retry or a clear of the same task instance finds the same job folder."""
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode())
    return f"{name[:80]}-{digest.hexdigest()[:12]}"
