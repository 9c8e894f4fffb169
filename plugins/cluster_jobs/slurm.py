"""SLURM over SSH: the shell scripts, their parsers, and a blocking session that runs them.

Every operation works on many jobs at once, so a sweep costs one SSH connection and a few
remote commands, not a connection and a query per job: one ``squeue`` for the states of
all jobs (the way submitit's and snakemake's SLURM executors poll), one script for all
submissions. The scripts travel on the remote shell's stdin (no command-line limit);
every interpolated value is shell-quoted and file contents travel base64-encoded, so
nothing in them can be read as shell syntax. The async side (the triggerer's poller)
runs the same scripts over asyncssh.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cluster_jobs.results import JobReport, SubmitOutcome
from cluster_jobs.script import render_script
from contracts.jobs import EXIT_CODE_FILE, JOB_ID_FILE, LOG_FILE, SCRIPT_FILE, JobRequest
from contracts.profiles import ClusterProfile
from contracts.redact import redact_text
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


CLAIMS_DIR = ".claims"  # one file per claim, naming the key of the job that holds it
_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")
SSH_COMMAND_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 40
# What a SLURM client prints when the controller is busy, down or rate-limiting its RPCs
# (slurmctld's rl_enable, Slurm >= 23.02): wait and ask again, the jobs are unaffected.
SCHEDULER_BUSY_EXIT = 75


class SlurmError(RuntimeError):
    """A SLURM command failed for a reason that retrying will not fix (e.g. bad option)."""


class TransientError(RuntimeError):
    """The connection to the cluster failed; retrying may succeed."""


class SchedulerBusy(TransientError):
    """The scheduler did not answer (down, overloaded, rate limiting): back off."""


def check_job_id(job_id: str) -> str:
    if not _JOB_ID_RE.fullmatch(job_id):
        raise SlurmError(f"{job_id!r} is not a SLURM job id")
    return job_id


def remote_job_dir(profile: ClusterProfile, key: str) -> str:
    """Absolute or login-relative folder of one job (``work_dir/key``)."""
    return f"{profile.work_dir.rstrip('/')}/{key}"


# -- submission ------------------------------------------------------------------------------

def _write_file(path: str, content: str) -> str:
    encoded = base64.b64encode(content.encode()).decode()
    return f"printf %s {encoded} | base64 -d > {shlex.quote(path)}"


def _submit_one(profile: ClusterProfile, request: JobRequest, depends_on: Sequence[str],
                pass_env: Mapping[str, str]) -> str:
    """One job's part of the submit script, run in a subshell so a failure stays its own:
    if the job folder already names a job, print it (a retry re-attaches); otherwise write
    the files and script and sbatch it, after the jobs of ``depends_on`` (keys) if their
    folders name one."""
    if request.key is None:
        raise SlurmError("key: a SLURM job needs an idempotency key")
    key = request.key
    qdir = shlex.quote(remote_job_dir(profile, key))
    placeholder = "@@JOB_DIR@@"
    script = render_script(profile, request, placeholder)
    deps = [f'd=$(cat {shlex.quote(remote_job_dir(profile, k))}/{JOB_ID_FILE} 2>/dev/null) '
            '&& deps="$deps:$d"' for k in depends_on]
    body = [
        "umask 077",  # job folders hold specs and scripts: the user's alone
        f"mkdir -p {qdir}",
        f"cd {qdir}",
        f'if [ -s {JOB_ID_FILE} ]; then echo "existing {key} $(cat {JOB_ID_FILE})"; exit 0; fi',
        # The script needs an absolute folder for #SBATCH --chdir/--output.
        'JOB_DIR="$(pwd -P)"',
        'case "$JOB_DIR" in *[!A-Za-z0-9_./:@+=-]*) echo "unsafe job folder" >&2; exit 2;; esac',
        *[_write_file(name, content) for name, content in request.files.items()],
        _write_file(SCRIPT_FILE + ".in", script),
        f'sed "s|{placeholder}|$JOB_DIR|g" {SCRIPT_FILE}.in > {SCRIPT_FILE}',
        f"rm -f {SCRIPT_FILE}.in",
        'deps=""',
        *deps,
        # The profile's pass_env reaches the job through sbatch's exported environment,
        # never through a file.
        *[f"export {name}={shlex.quote(value)}" for name, value in sorted(pass_env.items())],
        f'out=$(sbatch --parsable ${{deps:+--dependency=afterany$deps}} {SCRIPT_FILE} 2>&1) '
        '|| { echo "$out" >&2; exit 3; }',
        'id="${out##*$\'\\n\'}"; id="${id%%;*}"',
        f'echo "$id" > {JOB_ID_FILE}.tmp && mv {JOB_ID_FILE}.tmp {JOB_ID_FILE}',
        f'echo "submitted {key} $id"',
    ]
    inner = "\n".join(body)
    return (f"( set -e\n{inner}\n) 2>\"$errs\" || echo \"error {key} "
            f"$(tail -c 2000 \"$errs\" | base64 -w0)\"")


def submit_script(profile: ClusterProfile,
                  items: Sequence[tuple[JobRequest, Sequence[str]]],
                  pass_env: Mapping[str, str]) -> str:
    """One script submitting every (request, keys it depends on), in order: a job that
    depends on another of the same script comes after it."""
    parts = ['errs=$(mktemp)', 'trap \'rm -f "$errs"\' EXIT']
    parts += [_submit_one(profile, request, deps, pass_env) for request, deps in items]
    return "\n".join(parts) + "\n"


def parse_submit(stdout: str, keys: Sequence[str]) -> list[SubmitOutcome]:
    """One SubmitOutcome per key, in order; a key the script never reported is an error."""
    found: dict[str, SubmitOutcome] = {}
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        key, _, value = rest.partition(" ")
        if word in {"existing", "submitted"}:
            found[key] = SubmitOutcome(key=key, result=word, job_id=check_job_id(value.strip()))
        elif word == "error":
            message = base64.b64decode(value.strip() or b"").decode("utf-8", "replace")
            found[key] = SubmitOutcome(key=key, result="error",
                                       error=message.strip() or "sbatch failed")
    return [found.get(k) or SubmitOutcome(key=k, result="error",
                                          error="the submit script did not report this job")
            for k in keys]


# -- states: one squeue for all jobs, a fallback for jobs it no longer knows -----------------

SQUEUE_FIELDS = "JobID:|,State:|,Reason:|,exit_code:|,TimeUsed:|,tres-alloc:|,NumNodes:|"
_BUSY_CHECK = [
    "rc=$?",
    'if [ $rc -ne 0 ]; then',
    '  case "$out" in *"Invalid job id"*) exit 0;; esac',  # squeue -j ONE_UNKNOWN_ID
    f'  printf "%s\\n" "$out" >&2; exit {SCHEDULER_BUSY_EXIT}',
    "fi",
]


def states_script(job_ids: Iterable[str]) -> str:
    """The state, exit code and allocation of every job SLURM still knows (live ones and
    those ended within MinJobAge): one ``squeue`` call, one controller RPC."""
    ids = ",".join(check_job_id(j) for j in job_ids)
    return "\n".join([f"out=$(squeue -h -t all -j {ids} -O {shlex.quote(SQUEUE_FIELDS)} 2>&1)",
                      *_BUSY_CHECK, 'printf "%s\\n" "$out"']) + "\n"


def forgotten_script(jobs: Mapping[str, str]) -> str:
    """For jobs ``squeue`` no longer knows (job id -> folder): accounting (sacct), the
    jobcomp file (sacct -c), then the exit code file the job script writes."""
    ids = ",".join(check_job_id(j) for j in jobs)
    fields = "State,ExitCode,ElapsedRaw,AllocTRES,NNodes"
    lines = [
        f"sacct -n -P -X -j {ids} -o JobIDRaw,{fields} 2>/dev/null | sed 's/^/a|/'",
        f"sacct -c -n -P -j {ids} -o JobID,{fields} 2>/dev/null | sed 's/^/c|/'",
    ]
    for job_id, job_dir in jobs.items():
        exit_file = f"{shlex.quote(job_dir)}/{EXIT_CODE_FILE}"
        lines.append(f'if [ -f {exit_file} ]; then echo "x|{job_id}|$(cat {exit_file})"; fi')
    return "\n".join(lines) + "\n"


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


def _accounting(elapsed_s: float | None, tres_text: str, nodes: str,
                source: str) -> JobAccounting:
    tres = _tres(tres_text)
    return JobAccounting(elapsed_s=elapsed_s, nodes=_int(nodes) or _int(tres.get("node")),
                         gpus=_int(tres.get("gres/gpu")) or 0 if tres else None,
                         tres=tres_text, source=source)


def _state(text: str, job_id: str) -> tuple[JobState, str]:
    try:
        return from_slurm(text), ""
    except ValueError:  # a state this code does not know yet: keep waiting, say so
        return JobState.RUNNING, f"unknown SLURM state {text!r}"


def parse_states(stdout: str) -> dict[str, JobReport]:
    """squeue lines (``id|STATE|Reason|wait status|TimeUsed|TRES|nodes|``) -> reports."""
    reports: dict[str, JobReport] = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 7 or not _JOB_ID_RE.fullmatch(fields[0]):
            continue
        job_id, state_text, reason, status, used, tres, nodes = fields[:7]
        state, unknown = _state(state_text, job_id)
        raw = _int(status) or 0
        code, sig = (raw >> 8, raw & 0x7F) if state.finished else (None, None)
        accounting = (_accounting(_seconds(used), tres, nodes, "squeue")
                      if state.finished else None)
        reports[job_id] = JobReport(
            JobStatus(job_id=job_id, state=state, exit_code=code, signal=sig or None,
                      reason=unknown or reason),
            accounting)
    return reports


def _exit_code(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def parse_forgotten(stdout: str, job_ids: Iterable[str]) -> dict[str, JobReport]:
    """Reports for jobs squeue no longer knows: sacct first, then jobcomp, then the exit
    code file; a job none of them knows failed ("SLURM does not know this job")."""
    found: dict[str, dict[str, list[str]]] = {}
    for line in stdout.splitlines():
        source, _, rest = line.strip().partition("|")
        fields = rest.split("|")
        if source in {"a", "c", "x"} and fields and _JOB_ID_RE.fullmatch(fields[0]):
            found.setdefault(fields[0], {}).setdefault(source, fields[1:])
    reports = {}
    for job_id in job_ids:
        seen = found.get(job_id, {})
        for source, name in (("a", "sacct"), ("c", "sacct")):
            if source in seen:
                state_text, code_text, elapsed, tres, nodes = (seen[source] + [""] * 5)[:5]
                code, sig = _exit_code(code_text)
                state, unknown = _state(state_text, job_id)
                elapsed_s = float(elapsed) if elapsed.strip().isdigit() else None
                reports[job_id] = JobReport(
                    JobStatus(job_id=job_id, state=state, exit_code=code, signal=sig or None,
                              reason=unknown),
                    _accounting(elapsed_s, tres, nodes, name))
                break
        else:
            code_text = (seen.get("x") or [""])[0].strip()
            if code_text.isdigit():
                code = int(code_text)
                reports[job_id] = JobReport(JobStatus(
                    job_id=job_id, state=JobState.COMPLETED if code == 0 else JobState.FAILED,
                    exit_code=code, reason="read from the job's exit code file"))
            else:
                reports[job_id] = JobReport(JobStatus(
                    job_id=job_id, state=JobState.FAILED,
                    reason="SLURM does not know this job and it left no exit code"))
    return reports


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


# -- folders, logs, cancellation ----------------------------------------------------------------

def existing_script(profile: ClusterProfile, keys: Iterable[str]) -> str:
    """``KEY JOB_ID`` for every key whose folder already names a job."""
    lines = []
    for key in keys:
        id_file = f"{shlex.quote(remote_job_dir(profile, key))}/{JOB_ID_FILE}"
        lines.append(f'if [ -s {id_file} ]; then echo "{key} $(cat {id_file})"; fi')
    return "\n".join(lines) + "\n"


def parse_existing(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, _, job_id = line.strip().partition(" ")
        if key and job_id:
            out[key] = check_job_id(job_id.strip())
    return out


def claims_script(profile: ClusterProfile, claims: Mapping[str, str]) -> str:
    """Claim each claim for its key (a hard link fails if the claim exists: atomic, also
    against another submitter at the same moment); print ``claim NAME HOLDER`` each."""
    folder = shlex.quote(f"{profile.work_dir.rstrip('/')}/{CLAIMS_DIR}")
    lines = ["umask 077", f"mkdir -p {folder}"]
    for claim, key in claims.items():
        path, staged = f"{folder}/{shlex.quote(claim)}", f"{folder}/.{shlex.quote(claim)}.$$"
        lines.append(f"printf %s {shlex.quote(key)} > {staged}; ln {staged} {path} "
                     f"2>/dev/null; rm -f {staged}; echo \"claim {claim} $(cat {path})\"")
    return "\n".join(lines) + "\n"


def parse_claims(stdout: str) -> dict[str, str]:
    return {parts[1]: parts[2] for line in stdout.splitlines()
            if len(parts := line.split()) == 3 and parts[0] == "claim"}


def take_over_script(profile: ClusterProfile, claim: str, old: str, new: str) -> str:
    folder = shlex.quote(f"{profile.work_dir.rstrip('/')}/{CLAIMS_DIR}")
    marker, path = f"{folder}/{shlex.quote(claim)}.from-{shlex.quote(old)}", \
        f"{folder}/{shlex.quote(claim)}"
    return (f"umask 077; if ( set -o noclobber; : > {marker} ) 2>/dev/null; then "
            f"printf %s {shlex.quote(new)} > {path}.$$ && mv -f {path}.$$ {path} && "
            "echo took; else echo lost; fi\n")


def archive_script(profile: ClusterProfile, keys: Iterable[str]) -> str:
    """Move finished jobs' folders aside, so their keys can run again."""
    return "\n".join(
        f'if [ -d {(d := shlex.quote(remote_job_dir(profile, key)))} ]; then '
        f'mv {d} {d}.ended-"$(date +%s%N)"; fi' for key in keys) + "\n"


def log_tails_script(job_dirs: Mapping[str, str], lines: int = LOG_TAIL_LINES
                     ) -> tuple[str, str]:
    """(script, marker): the last lines of each job's log (key -> folder), each after a
    marker line that no log contains."""
    marker = f"@@cluster_jobs-{secrets.token_hex(8)}@@"
    script = "\n".join(
        f'echo "{marker} {key}"; tail -n {int(lines)} {shlex.quote(job_dir)}/{LOG_FILE} '
        "2>/dev/null || true" for key, job_dir in job_dirs.items()) + "\n"
    return script, marker


def parse_log_tails(stdout: str, marker: str) -> dict[str, str]:
    tails: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith(marker + " "):
            current = tails.setdefault(line[len(marker) + 1:].strip(), [])
        elif current is not None:
            current.append(line)
    return {key: redact_text("\n".join(lines)) for key, lines in tails.items()}


def cancel_script(job_ids: Iterable[str]) -> str:
    return "scancel " + " ".join(shlex.quote(check_job_id(j)) for j in job_ids) + "\n"


def pass_env_values(profile: ClusterProfile, environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ[name] for name in profile.pass_env if name in environ}


# -- the blocking session (submissions and checks from a worker) ---------------------------------

class SlurmJobs:
    """Blocking SLURM operations over one SSH connection to the profile's login node,
    opened on first use and kept for the session (``with SlurmJobs(profile) as jobs``)."""

    def __init__(self, profile: ClusterProfile) -> None:
        self.profile = profile
        self._client: Any = None
        self.connections_opened = 0
        self.commands_run = 0

    def __enter__(self) -> SlurmJobs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self) -> Any:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        client = SSHHook(ssh_conn_id=self.profile.ssh_conn_id).get_conn()
        self.connections_opened += 1
        return client

    def run(self, script: str) -> tuple[int, str, str]:
        """Run one script (on the remote shell's stdin). The script is not logged: it
        carries the jobs' environment, which may hold credentials."""
        import paramiko

        try:
            if self._client is None:
                self._client = self._connect()
            stdin, stdout, stderr = self._client.exec_command(
                "bash -s", timeout=SSH_COMMAND_TIMEOUT_S)
            stdin.write(script)
            stdin.channel.shutdown_write()
            out = stdout.read()
            err = stderr.read()
            code = stdout.channel.recv_exit_status()
            self.commands_run += 1
        except (OSError, EOFError, paramiko.SSHException) as error:
            self.close()
            raise TransientError(f"SSH to the cluster failed: {error}") from error
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _checked(self, script: str, what: str) -> str:
        code, out, err = self.run(script)
        if code == SCHEDULER_BUSY_EXIT:
            raise SchedulerBusy(f"{what}: the scheduler did not answer: {err.strip()[-500:]}")
        if code != 0:
            raise TransientError(f"{what} failed (exit {code}): {err.strip()[-500:]}")
        return out

    # batch operations

    def submit_many(self, items: Sequence[tuple[JobRequest, Sequence[str]]],
                    environ: Mapping[str, str]) -> list[SubmitOutcome]:
        if not items:
            return []
        script = submit_script(self.profile, items, pass_env_values(self.profile, environ))
        out = self._checked(script, "submitting")
        return parse_submit(out, [request.key or "" for request, _ in items])

    def claim_many(self, claims: Mapping[str, str]) -> dict[str, str]:
        if not claims:
            return {}
        return parse_claims(self._checked(claims_script(self.profile, claims), "claiming"))

    def take_over(self, claim: str, old: str, new: str) -> bool:
        out = self._checked(take_over_script(self.profile, claim, old, new), "claiming")
        return out.strip() == "took"

    def existing_many(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        return parse_existing(self._checked(existing_script(self.profile, keys),
                                            "reading job folders"))

    def reports(self, jobs: Mapping[str, str]) -> dict[str, JobReport]:
        """Reports of jobs (job id -> key): one squeue, plus one fallback for the jobs it
        no longer knows."""
        if not jobs:
            return {}
        found = parse_states(self._checked(states_script(jobs), "state query"))
        missing = {j: remote_job_dir(self.profile, k) for j, k in jobs.items() if j not in found}
        if missing:
            found.update(parse_forgotten(self._checked(forgotten_script(missing),
                                                       "state query"), missing))
        return found

    def archive_many(self, keys: Sequence[str]) -> None:
        if keys:
            code, _, err = self.run(archive_script(self.profile, keys))
            if code != 0:
                raise SlurmError(f"could not move old job folders aside: {err.strip()[-300:]}")

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self.run(cancel_script(job_ids))

    def log_tails(self, keys: Sequence[str], lines: int = LOG_TAIL_LINES) -> dict[str, str]:
        if not keys:
            return {}
        script, marker = log_tails_script(
            {k: remote_job_dir(self.profile, k) for k in keys}, lines)
        _, out, _ = self.run(script)
        return parse_log_tails(out, marker)

    # one job (the operator's single-job path and the tests)

    def submit(self, request: JobRequest, environ: Mapping[str, str]) -> tuple[str, bool]:
        outcome = self.submit_many([(request, ())], environ)[0]
        if outcome.result == "error" or outcome.job_id is None:
            raise SlurmError(f"sbatch failed: {outcome.error[-2000:]}")
        return outcome.job_id, outcome.result == "existing"

    def existing(self, key: str) -> str | None:
        return self.existing_many([key]).get(key)

    def archive(self, key: str) -> None:
        self.archive_many([key])

    def status(self, job_id: str, key: str) -> JobStatus:
        return self.reports({job_id: key})[job_id].status

    def cancel(self, job_id: str) -> None:
        self.cancel_many([job_id])

    def log_tail(self, key: str, lines: int = LOG_TAIL_LINES) -> str:
        return self.log_tails([key], lines).get(key, "")
