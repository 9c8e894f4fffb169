"""SLURM over SSH: the shell commands, their parsers, and a hook that runs them.

Commands are built here once and run either through the blocking Airflow ``SSHHook``
(submit, cancel: on a worker) or an asyncssh connection (state and log polls: in the
triggerer). Every interpolated value is shell-quoted; file contents travel base64-encoded
so nothing in them can be read as shell syntax.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Mapping

from cluster_jobs.script import render_script
from contracts.jobs import (
    EXIT_CODE_FILE,
    JOB_ID_FILE,
    LOG_FILE,
    SCRIPT_FILE,
    JobRequest,
)
from contracts.profiles import ClusterProfile
from contracts.states import JobAccounting, JobState, JobStatus

# SLURM's long state names (scontrol JobState, sacct State, squeue %T) -> JobState.
# Preempted and requeued jobs go back to the queue and resume from their checkpoint,
# so they are waited for, never treated as final.
_SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "REQUEUED": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.FAILED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "OOM": JobState.OUT_OF_MEMORY,
    "PREEMPTED": JobState.PREEMPTED,
    "NODE_FAIL": JobState.NODE_FAIL,
}


def from_slurm(name: str) -> JobState:
    """Map a SLURM state ("CANCELLED by 0", "CANCELLED+", "OUT_OF_ME+") to a JobState."""
    word = name.strip().split(" ")[0].rstrip("+").upper()
    if word in _SLURM_STATES:
        return _SLURM_STATES[word]
    if word.startswith("OUT_OF_ME"):  # sacct truncates long names
        return JobState.OUT_OF_MEMORY
    raise ValueError(f"unknown SLURM job state {name!r}")



_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")
SSH_COMMAND_TIMEOUT_S = 60.0


class SlurmError(RuntimeError):
    """A SLURM command failed for a reason that retrying will not fix (e.g. bad option)."""


class TransientError(RuntimeError):
    """The connection to the cluster failed; retrying may succeed."""


def check_job_id(job_id: str) -> str:
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SlurmError(f"{job_id!r} is not a SLURM job id")
    return job_id


def remote_job_dir(profile: ClusterProfile, key: str) -> str:
    """Absolute or login-relative folder of one job (``work_dir/key``)."""
    return f"{profile.work_dir.rstrip('/')}/{key}"


def _write_file(path: str, content: str) -> str:
    encoded = base64.b64encode(content.encode()).decode()
    return f"printf %s {encoded} | base64 -d > {shlex.quote(path)}"


def submit_command(
    profile: ClusterProfile, request: JobRequest, pass_env: Mapping[str, str]
) -> str:
    """One idempotent shell command: if the job folder already names a job, print its id
    (a retried task re-attaches); otherwise write the files and script, sbatch, record."""
    if request.key is None:
        raise SlurmError("key: a SLURM job needs an idempotency key")
    job_dir = remote_job_dir(profile, request.key)
    qdir = shlex.quote(job_dir)
    # The script needs an absolute folder for #SBATCH --chdir/--output: resolve it first.
    lines = [
        "set -e",
        f"mkdir -p {qdir}",
        f"cd {qdir}",
        f"if [ -s {JOB_ID_FILE} ]; then echo \"existing $(cat {JOB_ID_FILE})\"; exit 0; fi",
        'JOB_DIR="$(pwd -P)"',
        'case "$JOB_DIR" in *[!A-Za-z0-9_./:@+=-]*) echo "unsafe job folder" >&2; exit 2;; esac',
    ]
    lines += [_write_file(name, content) for name, content in request.files.items()]
    placeholder = "@@JOB_DIR@@"
    script = render_script(profile, request, placeholder, dict(pass_env))
    lines += [
        _write_file(SCRIPT_FILE + ".in", script),
        f'sed "s|{placeholder}|$JOB_DIR|g" {SCRIPT_FILE}.in > {SCRIPT_FILE}',
        f"rm -f {SCRIPT_FILE}.in",
        f"id=$(sbatch --parsable {SCRIPT_FILE})",
        'id="${id%%;*}"',
        f'echo "$id" > {JOB_ID_FILE}.tmp && mv {JOB_ID_FILE}.tmp {JOB_ID_FILE}',
        'echo "submitted $id"',
    ]
    return "\n".join(lines)


def parse_submit(stdout: str) -> tuple[str, bool]:
    """(job id, re-attached?) from the submit command's last line."""
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    word, _, job_id = last.partition(" ")
    if word not in {"existing", "submitted"}:
        raise SlurmError(f"unexpected sbatch output: {stdout.strip()[-500:]!r}")
    return check_job_id(job_id.strip()), word == "existing"


def status_command(job_id: str, job_dir: str) -> str:
    """State from scontrol (live and recent jobs), then sacct (accounting or the jobcomp
    file), then the exit code file the job script writes (scheduler forgot the job)."""
    jid = shlex.quote(check_job_id(job_id))
    qdir = shlex.quote(job_dir)
    return "\n".join([
        f"if out=$(scontrol show job -o {jid} 2>/dev/null); then",
        '  echo "scontrol $out"; exit 0',
        "fi",
        f"out=$(sacct -n -P -X -j {jid} -o State,ExitCode 2>/dev/null | tail -n1) || out=''",
        'if [ -n "$out" ]; then echo "sacct $out"; exit 0; fi',
        f"out=$(sacct -c -n -P -j {jid} -o State,ExitCode 2>/dev/null | tail -n1) || out=''",
        'if [ -n "$out" ]; then echo "sacct $out"; exit 0; fi',
        f"if [ -f {qdir}/{EXIT_CODE_FILE} ]; then echo \"exitfile $(cat {qdir}/{EXIT_CODE_FILE})\";"
        " exit 0; fi",
        "echo unknown",
    ])


def _exit_code(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def parse_status(job_id: str, stdout: str) -> JobStatus:
    text = stdout.strip()
    source, _, rest = text.partition(" ")
    if source == "scontrol":
        fields = dict(re.findall(r"(\w+)=(\S*)", rest))
        code, sig = _exit_code(fields.get("ExitCode", ""))
        state = from_slurm(fields.get("JobState", ""))
        return JobStatus(job_id=job_id, state=state, exit_code=code, signal=sig,
                         reason=fields.get("Reason", ""))
    if source == "sacct":
        state_text, _, code_text = rest.partition("|")
        code, sig = _exit_code(code_text)
        return JobStatus(job_id=job_id, state=from_slurm(state_text), exit_code=code,
                         signal=sig)
    if source == "exitfile":
        code = int(rest) if rest.strip().isdigit() else None
        state = JobState.COMPLETED if code == 0 else JobState.FAILED
        return JobStatus(job_id=job_id, state=state, exit_code=code,
                         reason="read from the job's exit code file")
    return JobStatus(job_id=job_id, state=JobState.FAILED,
                     reason="SLURM does not know this job and it left no exit code")


# What slurmstepd writes into the job's output when it kills a job for its memory: with
# task/cgroup the state is OUT_OF_MEMORY, but with jobacct_gather's OverMemoryKill (no
# cgroups, as in containers) it is FAILED or CANCELLED and only the log says why.
MEMORY_KILL_MARKERS = ("exceeded memory limit", "exceeded job memory limit",
                       "oom-kill event", "oom_kill event", "out of memory")


def memory_killed(log_tail: str) -> bool:
    lines = [line.lower() for line in log_tail.splitlines() if "slurmstepd" in line.lower()]
    return any(marker in line for line in lines for marker in MEMORY_KILL_MARKERS)


def classify_end(status: JobStatus, log_tail: str) -> JobStatus:
    """A job SLURM killed for its memory is OUT_OF_MEMORY, whatever state it reports."""
    if status.state in (JobState.FAILED, JobState.CANCELLED) and memory_killed(log_tail):
        return status.model_copy(update={
            "state": JobState.OUT_OF_MEMORY,
            "reason": "slurmstepd killed the job: it exceeded its memory limit"})
    return status


def accounting_command(job_id: str) -> str:
    """Elapsed time and allocated resources of a finished job: sacct (accounting storage),
    else scontrol (recent jobs), else the jobcomp file (elapsed only)."""
    jid = shlex.quote(check_job_id(job_id))
    return "\n".join([
        f"out=$(sacct -n -P -X -j {jid} -o ElapsedRaw,AllocTRES,NNodes 2>/dev/null | tail -n1)"
        " || out=''",
        'if [ -n "$out" ]; then echo "sacct $out"; exit 0; fi',
        f"if out=$(scontrol show job -o {jid} 2>/dev/null); then",
        '  echo "scontrol $out"; exit 0',
        "fi",
        f"out=$(sacct -c -n -P -j {jid} -o ElapsedRaw,AllocTRES,NNodes 2>/dev/null | tail -n1)"
        " || out=''",
        'if [ -n "$out" ]; then echo "sacct $out"; exit 0; fi',
        "echo unknown",
    ])


def _seconds(text: str) -> float | None:
    """SLURM durations: [D-]HH:MM:SS, MM:SS."""
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
        return float(seconds + int(days or 0) * 86400)
    except ValueError:
        return None


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse_accounting(stdout: str) -> JobAccounting | None:
    text = stdout.strip()
    source, _, rest = text.partition(" ")
    if source == "sacct":
        elapsed, tres_text, nodes = (rest.split("|") + ["", "", ""])[:3]
        tres = _tres(tres_text)
        gpus = _int(tres.get("gres/gpu")) if tres else None
        return JobAccounting(
            elapsed_s=float(elapsed) if elapsed.strip().isdigit() else None,
            nodes=_int(nodes) or _int(tres.get("node")),
            gpus=gpus if gpus is not None else (0 if tres else None),
            tres=tres_text, source="sacct")
    if source == "scontrol":
        fields = dict(re.findall(r"(\w+)=(\S*)", rest))
        tres_text = fields.get("TRES", "")
        tres = _tres(tres_text)
        return JobAccounting(
            elapsed_s=_seconds(fields.get("RunTime", "")), nodes=_int(fields.get("NumNodes")),
            gpus=_int(tres.get("gres/gpu")) or 0, tres=tres_text, source="scontrol")
    return None


def cancel_command(job_id: str) -> str:
    return f"scancel {shlex.quote(check_job_id(job_id))}"


def log_tail_command(job_dir: str, lines: int = 40) -> str:
    return f"tail -n {int(lines)} {shlex.quote(job_dir)}/{LOG_FILE} 2>/dev/null || true"


def pass_env_values(profile: ClusterProfile, environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ[name] for name in profile.pass_env if name in environ}


class SlurmJobs:
    """Blocking SLURM operations over the profile's Airflow SSH connection."""

    def __init__(self, profile: ClusterProfile) -> None:
        self.profile = profile

    def _run(self, command: str) -> tuple[int, str, str]:
        """Run one command; the command itself is not logged (it carries the job's
        environment, which may hold credentials)."""
        import paramiko
        from airflow.providers.ssh.hooks.ssh import SSHHook

        try:
            hook = SSHHook(ssh_conn_id=self.profile.ssh_conn_id)
            with hook.get_conn() as client:
                _, stdout, stderr = client.exec_command(command, timeout=SSH_COMMAND_TIMEOUT_S)
                out = stdout.read()
                err = stderr.read()
                code = stdout.channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise TransientError(f"SSH to the cluster failed: {error}") from error
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def submit(self, request: JobRequest, environ: Mapping[str, str]) -> tuple[str, bool]:
        command = submit_command(self.profile, request, pass_env_values(self.profile, environ))
        code, out, err = self._run(command)
        if code != 0:
            raise SlurmError(f"sbatch failed (exit {code}): {(err or out).strip()[-2000:]}")
        return parse_submit(out)

    def existing(self, key: str) -> str | None:
        job_dir = shlex.quote(remote_job_dir(self.profile, key))
        code, out, err = self._run(f"cat {job_dir}/{JOB_ID_FILE} 2>/dev/null || true")
        if code != 0:
            raise TransientError(f"reading the job folder failed: {err.strip()[-300:]}")
        return check_job_id(out.strip()) if out.strip() else None

    def archive(self, key: str) -> None:
        job_dir = shlex.quote(remote_job_dir(self.profile, key))
        code, _, err = self._run(f'mv {job_dir} {job_dir}.ended-"$(date +%s%N)"')
        if code != 0:
            raise SlurmError(f"could not move the old job folder aside: {err.strip()[-300:]}")

    def status(self, job_id: str, key: str) -> JobStatus:
        code, out, err = self._run(status_command(job_id, remote_job_dir(self.profile, key)))
        if code != 0:
            raise TransientError(f"state query failed (exit {code}): {err.strip()[-500:]}")
        return parse_status(job_id, out)

    def cancel(self, job_id: str) -> None:
        self._run(cancel_command(job_id))

    def log_tail(self, key: str, lines: int = 40) -> str:
        _, out, _ = self._run(log_tail_command(remote_job_dir(self.profile, key), lines))
        return out

    def accounting(self, job_id: str) -> JobAccounting | None:
        _, out, _ = self._run(accounting_command(job_id))
        return parse_accounting(out)
