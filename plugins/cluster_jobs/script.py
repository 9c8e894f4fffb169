"""The batch script rendered from a job request (``contracts.jobs.JobRequest``).

The script is the same for SLURM and local jobs, so a job behaves alike on a laptop and on
a cluster. Every value from a request is shell-quoted: requests carry values that came from
an untrusted trigger form.
"""

from __future__ import annotations

import shlex

from contracts.jobs import (
    EXIT_CODE_FILE,
    JOB_DIR_PLACEHOLDER,
    JOB_ID_PLACEHOLDER,
    LOG_FILE,
    JobRequest,
)
from contracts.profiles import ClusterProfile, Resources


def _quote_arg(arg: str) -> str:
    if arg == JOB_ID_PLACEHOLDER:
        return '"$CLUSTER_JOB_ID"'
    if arg.startswith(JOB_DIR_PLACEHOLDER):
        rest = arg.removeprefix(JOB_DIR_PLACEHOLDER)
        return '"$JOB_DIR"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(arg)


def _command_line(argv: tuple[str, ...], profile: ClusterProfile, res: Resources) -> str:
    command = " ".join(_quote_arg(a) for a in argv)
    env_opt = f" --environment={shlex.quote(profile.environment)}" if profile.environment else ""
    if profile.launcher == "none":
        return command
    if profile.launcher == "srun":
        return f"srun{env_opt} {command}"
    if profile.backend == "local":
        # One machine: torchrun's standalone rendezvous (a free local port), workers_per_node
        # processes; `python -m mod` -> `python -m torch.distributed.run ... -m mod`.
        if len(argv) > 2 and argv[1] == "-m":
            return (f"{_quote_arg(argv[0])} -m torch.distributed.run --standalone "
                    f"--nproc-per-node={res.workers} "
                    + " ".join(_quote_arg(a) for a in argv[1:]))
        return command
    # torchrun: one launcher per node, one worker per GPU; `python -m mod` -> `-m mod`.
    rest = argv[1:] if len(argv) > 2 and argv[1] == "-m" else argv
    workers = res.workers
    inner = (
        'exec torchrun --nnodes="$SLURM_NNODES" --node-rank="$SLURM_NODEID" '
        f'--nproc-per-node={workers} --rdzv-backend=c10d '
        '--rdzv-endpoint="$MASTER_ADDR:29500" --rdzv-id="$SLURM_JOB_ID" "$@"'
    )
    return (
        f"srun --ntasks-per-node=1{env_opt} bash -c {shlex.quote(inner)} torchrun "
        + " ".join(_quote_arg(a) for a in rest)
    )


def job_resources(profile: ClusterProfile, request: JobRequest) -> Resources:
    return profile.resources_for(request.resources_key, request.resources)


def sbatch_directives(profile: ClusterProfile, request: JobRequest, job_dir: str) -> list[str]:
    res = job_resources(profile, request)
    lines = [
        f"--job-name={request.name}",
        f"--chdir={job_dir}",
        f"--output={job_dir}/{LOG_FILE}",
        "--open-mode=append",  # a requeued job appends to the same log
        "--requeue",
        f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.tasks_per_node}",
        f"--time={res.time_limit}",
    ]
    if res.gpus_per_node:
        lines.append(f"--gpus-per-node={res.gpus_per_node}")
    if res.cpus_per_task:
        lines.append(f"--cpus-per-task={res.cpus_per_task}")
    if res.mem:
        lines.append(f"--mem={res.mem}")
    for option in ("partition", "account", "qos"):
        value = getattr(profile, option)
        if value:
            lines.append(f"--{option}={value}")
    lines.extend(f"--{opt.removeprefix('--')}" for opt in profile.sbatch_options)
    return [f"#SBATCH {line}" for line in lines]


def _chdir_line(profile: ClusterProfile) -> str | None:
    if profile.chdir is None:
        return None
    if profile.backend == "local":
        return f"cd {shlex.quote(str(profile.local_path(profile.chdir)))}"
    if profile.chdir.startswith("/"):
        return f"cd {shlex.quote(profile.chdir)}"
    return f'cd "$HOME"/{shlex.quote(profile.chdir)}'


def render_script(profile: ClusterProfile, request: JobRequest, job_dir: str) -> str:
    """The job script: #SBATCH header (ignored by the local backend), environment, setup,
    the command, and its exit code written beside the log (read back if the scheduler
    has already forgotten the job).

    Only the profile's and the request's own settings are written into it; the values the
    profile passes from the submitting side (``pass_env``: a tracking URI with its password,
    say) reach the job through the environment of the process that starts it, never a file.
    """
    res = job_resources(profile, request)
    env = {**profile.env, **request.env}
    body = [
        "#!/bin/bash",
        *sbatch_directives(profile, request, job_dir),
        "set -uo pipefail",
        f"export JOB_DIR={shlex.quote(job_dir)}",
        'cd "$JOB_DIR"',
        'export CLUSTER_JOB_ID="${SLURM_JOB_ID:-${CLUSTER_JOB_ID:-unknown}}"',
    ]
    body += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    if profile.launcher == "torchrun":
        body.append(
            # The first node, unless the profile's env names it (a node name that does
            # not resolve, as on a one-machine test cluster).
            'export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames '
            '"$SLURM_JOB_NODELIST" | head -n1)}"'
        )
    body += [
        'echo "[cluster_jobs] job $CLUSTER_JOB_ID on $(hostname) at $(date -Is)"',
        *profile.setup,
        *filter(None, [_chdir_line(profile)]),
        _command_line(request.argv, profile, res),
        "rc=$?",
        f'echo "$rc" > "$JOB_DIR"/{EXIT_CODE_FILE}',
        'echo "[cluster_jobs] exit code $rc at $(date -Is)"',
        'exit "$rc"',
    ]
    return "\n".join(body) + "\n"
