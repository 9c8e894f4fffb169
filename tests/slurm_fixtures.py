"""Fixtures: a real single-node SLURM cluster and sshd on 127.0.0.1, started from nothing.

scripts/local-slurm.sh does the work (installing the Debian packages with apt-get when
they are missing, as on a clean CI machine running as root); the fixture only skips when
that is impossible (no apt-get, or not root), and stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "local-slurm.sh"
CONN_ID = "lr_slurm_test"


@dataclass(frozen=True)
class LocalSlurm:
    root: Path
    ssh_port: int
    ssh_user: str
    ssh_key: Path
    ssh_host_key: str
    slurm_conf: Path
    work_dir: Path
    conn_id: str = CONN_ID

    def connection_json(self) -> str:
        """An Airflow SSH connection (AIRFLOW_CONN_* form), host key pinned."""
        return json.dumps({
            "conn_type": "ssh", "host": "127.0.0.1", "port": self.ssh_port,
            "login": self.ssh_user,
            "extra": {"key_file": str(self.ssh_key), "host_key": self.ssh_host_key,
                      "look_for_keys": "false"},
        })

    def scontrol(self, *args: str) -> str:
        return self._client("scontrol", *args)

    def squeue(self, *args: str) -> str:
        return self._client("squeue", *args)

    def _client(self, command: str, *args: str) -> str:
        env = {**os.environ, "SLURM_CONF": str(self.slurm_conf)}
        return subprocess.run([command, *args], env=env, capture_output=True, text=True,
                              check=False).stdout


def _impossible_reason() -> str | None:
    have = all(shutil.which(b) or Path("/usr/sbin", b).exists()
               for b in ("slurmctld", "slurmd", "sbatch", "munged", "sshd"))
    if have and os.geteuid() == 0:
        return None
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/sshd needs root (run the SLURM tests as root)"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


def _parse_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip('"')
    return out


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """A running SLURM cluster + sshd, the Airflow connection `lr_slurm_test` set."""
    reason = _impossible_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(SCRIPT), "up", str(root)], capture_output=True,
                        text=True, timeout=600, check=False)
    if up.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "down", str(root)], check=False)
        pytest.fail(f"local SLURM did not start:\n{up.stderr[-3000:]}")
    env = _parse_env(root / "cluster.env")
    cluster = LocalSlurm(
        root=root, ssh_port=int(env["SSH_PORT"]), ssh_user=env["SSH_USER"],
        ssh_key=Path(env["SSH_KEY"]), ssh_host_key=env["SSH_HOST_KEY"],
        slurm_conf=Path(env["SLURM_CONF"]), work_dir=Path(env["WORK_DIR"]),
    )
    variable = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    os.environ[variable] = cluster.connection_json()
    try:
        yield cluster
    finally:
        os.environ.pop(variable, None)
        subprocess.run(["bash", str(SCRIPT), "down", str(root)], check=False, timeout=120)


@pytest.fixture
def slurm_profile(local_slurm: LocalSlurm, tmp_path: Path):
    """A slurm ClusterProfile for the local cluster, jobs in a folder private to the test."""
    from contracts.profiles import ClusterProfile

    work = tmp_path / "jobs"
    return ClusterProfile(
        name="slurm-test", backend="slurm", ssh_conn_id=local_slurm.conn_id,
        work_dir=str(work), outputs_dir=str(tmp_path / "runs"), chdir=str(REPO_ROOT),
        python=str(REPO_ROOT / ".venv" / "bin" / "python"), poll_interval=1,
        pass_env=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LORA_REGRET_ARTIFACT_ROOT",
                  "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                  "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"),
    )
