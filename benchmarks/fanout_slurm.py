"""Fan-out of a sweep through a real Airflow onto the local SLURM cluster, and its sensing.

Every job only sleeps (the cluster profile's `python` is a stand-in script), so the
figures measure orchestration alone: the real lora_regret_sweep DAG, `airflow standalone`
(scheduler, triggerer, dag processor, API server; LocalExecutor on SQLite), the `submit`
task (every job over one SSH session), and the `train` tasks started directly in the
triggerer, all sensed by one poller per cluster.

Reports, from the trigger: seconds until `plan` is done, until every job is submitted
(its folder names a SLURM job id), until every `train` task waits in the triggerer, and
until all are sensed done; the worker slots (`train` task instances running) held while
the jobs wait; SSH connections opened and remote commands run (sshd's own log) while
submitting and while sensing; and slurmctld's RPCs (sdiag): job submissions, and state
queries per poll interval while the jobs wait.

    sudo .venv/bin/python benchmarks/fanout_slurm.py --runs 52 --sleep 180
    sudo .venv/bin/python benchmarks/fanout_slurm.py --runs 520 --sleep 60

`--runs` is a multiple of 52 (the reference grid, with that many seeds). Needs root (it
starts slurmctld, slurmd, sshd via scripts/local-slurm.sh) and about 2 GB of memory; it
stops everything it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
CONN_ID = "lr_bench_slurm"
GRID = 52  # the reference grid


def sh(*args: str, env: dict | None = None, check: bool = True) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=check).stdout


def wait(what: str, predicate, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


class Sshd:
    """Counts in sshd's log (LogLevel VERBOSE): connections and remote commands."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def counts(self) -> dict[str, int]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return {"connections": text.count("Accepted publickey"),
                "commands": len(re.findall(r"Starting session: command", text))}


class Slurmctld:
    """slurmctld's RPC counters by message type (sdiag)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def reset(self) -> None:
        sh("sdiag", "-r", env=self.env, check=False)

    def counts(self) -> dict[str, int]:
        out = sh("sdiag", env=self.env, check=False)
        return {name: int(count) for name, count in
                re.findall(r"^\s+(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)", out, re.M)}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=GRID, help="jobs (a multiple of 52)")
    parser.add_argument("--sleep", type=int, default=180, help="seconds each job sleeps "
                        "(longer than the submission phase, so a waiting window exists)")
    parser.add_argument("--parallelism", type=int, default=8, help="Airflow worker slots")
    parser.add_argument("--poll", type=float, default=5.0, help="poll interval (s)")
    parser.add_argument("--cpus", type=int, default=0,
                        help="CPUs the SLURM node advertises (default: one per job, at most 256)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if args.runs % GRID:
        parser.error("--runs must be a multiple of 52")

    root = Path(tempfile.mkdtemp(prefix="lr-fanout-"))
    cluster, airflow_home = root / "slurm", root / "airflow"
    airflow_home.mkdir()
    print(f"[fanout] working in {root}", flush=True)
    cpus = args.cpus or min(args.runs, 256)
    subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "up", str(cluster),
                    str(cpus)], check=True, capture_output=True)
    cenv = dict(line.split("=", 1) for line in (cluster / "cluster.env").read_text().split("\n")
                if "=" in line)
    slurm_env = {**os.environ, "SLURM_CONF": cenv["SLURM_CONF"]}
    sshd, ctld = Sshd(cluster / "log" / "sshd.log"), Slurmctld(slurm_env)
    standalone = None
    try:
        # A stand-in for `python -m training ...`: sleeps, exits 0.
        fake = root / "fake-python"
        fake.write_text(f"#!/bin/bash\nsleep {args.sleep}\nexit 0\n")
        fake.chmod(0o755)
        clusters = root / "clusters"
        clusters.mkdir()
        (clusters / "bench.yaml").write_text(yaml.safe_dump({
            "backend": "slurm", "ssh_conn_id": CONN_ID, "work_dir": str(root / "jobs"),
            "outputs_dir": str(root / "runs"), "python": str(fake),
            "poll_interval": args.poll, "resources": {"time_limit": "60"},
        }))
        api_port = sh(PY, "-c", "import socket; s=socket.socket(); "
                      "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])").strip()
        env = {
            **os.environ,
            "PATH": f"{Path(PY).parent}:{os.environ['PATH']}",  # standalone runs `airflow`
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(64, args.runs + 16)),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__TRIGGERER__CAPACITY": str(max(1000, args.runs + 100)),
            "AIRFLOW__API__PORT": api_port,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
            "LORA_REGRET_CLUSTERS_DIR": str(clusters),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({
                "conn_type": "ssh", "host": "127.0.0.1", "port": int(cenv["SSH_PORT"]),
                "login": cenv["SSH_USER"],
                "extra": {"key_file": cenv["SSH_KEY"], "host_key": cenv["SSH_HOST_KEY"].strip('"'),
                          "look_for_keys": "false"}}),
        }
        sh(PY, "-m", "airflow", "db", "migrate", env=env)
        # A deployment's MLflow store exists before the first sweep: create its tables now
        # rather than inside the timed plan task.
        sh(PY, "-c", "from mlflow.tracking import MlflowClient; "
           f"MlflowClient({env['MLFLOW_TRACKING_URI']!r}).search_experiments()", env=env)
        log = (root / "standalone.log").open("w")
        standalone = subprocess.Popen([PY, "-m", "airflow", "standalone"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        db = sqlite3.connect(airflow_home / "airflow.db", timeout=30)

        def parsed() -> bool:
            return bool(db.execute("select 1 from dag where dag_id='lora_regret_sweep' "
                                   "and is_stale=0").fetchall())

        wait("the DAG to be parsed", parsed, 300)
        sh(PY, "-m", "airflow", "dags", "unpause", "lora_regret_sweep", env=env)
        print("[fanout] airflow up, DAG parsed; triggering", flush=True)
        conf = {"cluster": "bench", "evaluate": False,
                "seeds": list(range(args.runs // GRID))}
        ssh_start = sshd.counts()
        ctld.reset()
        t0, wall0 = time.monotonic(), time.time()
        sh(PY, "-m", "airflow", "dags", "trigger", "lora_regret_sweep", "-c", json.dumps(conf),
           env=env)

        def submitted() -> int:
            return sum(1 for _ in (root / "jobs").glob("*/job_id")) \
                if (root / "jobs").exists() else 0

        def first_job_finished() -> bool:
            return any((root / "jobs").glob("*/exit_code")) if (root / "jobs").exists() \
                else False

        samples = []
        marks: dict[str, float] = {}
        ssh_at: dict[str, dict[str, int]] = {}
        rpc_at: dict[str, dict[str, int]] = {}
        while time.monotonic() - t0 < 3600:
            rows = dict(db.execute(
                "select coalesce(state,'none'), count(*) from task_instance "
                "where task_id='train' and map_index>=0 group by state").fetchall())
            broken = db.execute("select task_id, map_index, state from task_instance where "
                                "state in ('failed', 'upstream_failed')").fetchall()
            if broken:
                raise RuntimeError(f"tasks failed (see {root}/airflow/logs): {broken[:5]}")
            now = time.monotonic() - t0
            n_sub = submitted()
            for name, done in [
                    ("plan", bool(db.execute("select 1 from task_instance where task_id='plan'"
                                             " and state='success'").fetchall())),
                    ("submitted", n_sub >= args.runs),
                    ("deferred", rows.get("deferred", 0) >= args.runs),
                    ("first_done", first_job_finished())]:
                if done and name not in marks:
                    marks[name] = now
                    ssh_at[name], rpc_at[name] = sshd.counts(), ctld.counts()
                    print(f"[fanout] {name} at {now:.1f}s", flush=True)
            samples.append((now, n_sub, rows.get("running", 0), rows.get("deferred", 0),
                            rows.get("success", 0)))
            if rows.get("success", 0) >= args.runs:
                marks["done"] = now
                ssh_at["done"], rpc_at["done"] = sshd.counts(), ctld.counts()
                break
            time.sleep(0.5)
        if "done" not in marks:
            raise TimeoutError("not all jobs sensed done in an hour")
        poll_times = [dt.datetime.fromisoformat(stamp).timestamp() - wall0 for stamp in
                      re.findall(r"(\d{4}-\d\d-\d\dT[\d:.]+)Z \[info\s*\] cluster \S+: \d+ "
                                 r"job\(s\) polled", (root / "standalone.log").read_text(
                                     errors="replace"))]
        # "Waiting": every train task deferred and no job finished yet, so no task has a
        # reason to be on a worker: with start_from_trigger none ever was.
        start_wait, end_wait = marks["deferred"], marks.get("first_done", marks["done"])
        waiting = [s for s in samples if start_wait <= s[0] < end_wait]
        slot_seconds = sum((b[0] - a[0]) * a[2] for a, b in zip(samples, samples[1:],
                                                                strict=False))
        sensing_rpc = diff(rpc_at["done"], rpc_at["submitted"])
        window = max(end_wait - start_wait, 1e-9)
        gaps = [b - a for a, b in zip(poll_times, poll_times[1:], strict=False)]
        result = {
            "jobs": args.runs, "sleep_s": args.sleep, "parallelism": args.parallelism,
            "poll_s": args.poll, "slurm_cpus": cpus,
            "seconds_until_plan_done": round(marks["plan"], 1),
            "seconds_until_all_submitted": round(marks["submitted"], 1),
            "seconds_until_all_train_tasks_deferred": round(marks["deferred"], 1),
            "seconds_until_first_job_finished": round(marks.get("first_done", 0), 1),
            "seconds_until_all_sensed_done": round(marks["done"], 1),
            "waiting_window_s": round(window, 1),
            "worker_slots_held_while_waiting_max": max((s[2] for s in waiting), default=None),
            "waiting_samples": len(waiting),
            "worker_slots_held_during_submission_max": max(
                (s[2] for s in samples if s[0] < marks["deferred"]), default=0),
            "worker_slot_seconds_all_train_tasks": round(slot_seconds, 1),
            "job_seconds_all_train_tasks": args.runs * args.sleep,
            "ssh_while_submitting": diff(ssh_at["submitted"], ssh_start),
            "ssh_while_sensing": diff(ssh_at["done"], ssh_at["submitted"]),
            "slurmctld_rpcs_until_all_submitted": rpc_at["submitted"],
            "slurmctld_rpcs_while_sensing": sensing_rpc,
            "seconds_until_first_poll": round(poll_times[0], 1) if poll_times else None,
            "polls": len(poll_times),
            "seconds_between_polls_median": round(sorted(gaps)[len(gaps) // 2], 2)
            if gaps else None,
            "job_state_rpcs_per_poll": round(
                (sensing_rpc.get("REQUEST_JOB_INFO", 0)
                 + sensing_rpc.get("REQUEST_JOB_INFO_SINGLE", 0)) / max(len(poll_times), 1), 2),
            "ssh_commands_per_poll": round(
                diff(ssh_at["done"], ssh_at["submitted"]).get("commands", 0)
                / max(len(poll_times), 1), 2),
        }
        print(json.dumps(result, indent=2))
        (root / "result.json").write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if standalone is not None:
            os.killpg(standalone.pid, signal.SIGTERM)
            try:
                standalone.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(standalone.pid, signal.SIGKILL)
        subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "down", str(cluster)],
                       check=False)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    sys.exit(main())
