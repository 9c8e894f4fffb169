"""Fan-out of the 52-run reference grid through a real Airflow onto the local SLURM cluster.

Every job only sleeps (the cluster profile's `python` is a stand-in script), so the
figures measure orchestration alone: the real lora_regret_sweep DAG, `airflow standalone`
(scheduler, triggerer, dag processor, API server; LocalExecutor on SQLite), submission
over SSH, and deferred sensing in the triggerer.

Reports seconds from trigger until all 52 jobs are submitted and until all are sensed done,
and the worker slots (train task instances in state running) held while jobs wait.

    sudo .venv/bin/python benchmarks/fanout_slurm.py [--sleep 60] [--parallelism 8]

Needs root (it starts slurmctld, slurmd, sshd via scripts/local-slurm.sh) and about
1.5 GB of memory; it stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep", type=int, default=180, help="seconds each job sleeps "
                        "(longer than the submission phase, so a waiting window exists)")
    parser.add_argument("--parallelism", type=int, default=8, help="Airflow worker slots")
    parser.add_argument("--poll", type=float, default=5.0, help="trigger poll interval (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lr-fanout-"))
    cluster, airflow_home = root / "slurm", root / "airflow"
    airflow_home.mkdir()
    print(f"[fanout] working in {root}", flush=True)
    subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "up", str(cluster), "64"],
                   check=True, capture_output=True)
    cenv = dict(line.split("=", 1) for line in (cluster / "cluster.env").read_text().split("\n")
                if "=" in line)
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
            "poll_interval": args.poll, "resources": {"time_limit": "30"},
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
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
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
        conf = {"cluster": "bench", "evaluate": False}
        t0 = time.monotonic()
        sh(PY, "-m", "airflow", "dags", "trigger", "lora_regret_sweep", "-c", json.dumps(conf),
           env=env)

        def submitted() -> int:
            return sum(1 for p in (root / "jobs").glob("*/job_id")) if (root / "jobs").exists() \
                else 0

        def first_job_finished() -> bool:
            return any((root / "jobs").glob("*/exit_code")) if (root / "jobs").exists() \
                else False

        samples = []
        t_submitted = t_done = t_first_done = t_plan = None
        while time.monotonic() - t0 < 1800:
            rows = dict(db.execute(
                "select coalesce(state,'none'), count(*) from task_instance "
                "where task_id='train' and map_index>=0 group by state").fetchall())
            broken = db.execute("select task_id, state from task_instance where state in "
                                "('failed', 'upstream_failed')").fetchall()
            if broken:
                raise RuntimeError(f"tasks failed (see {root}/airflow/logs): {broken}")
            now = time.monotonic() - t0
            n_sub = submitted()
            if t_first_done is None and first_job_finished():
                t_first_done = now
            if t_plan is None and db.execute("select 1 from task_instance where "
                                             "task_id='plan' and state='success'").fetchall():
                t_plan = now
            samples.append((now, n_sub, rows.get("running", 0), rows.get("deferred", 0),
                            rows.get("success", 0)))
            if t_submitted is None and n_sub >= 52:
                t_submitted = now
                print(f"[fanout] all 52 submitted at {now:.1f}s", flush=True)
            if rows.get("success", 0) >= 52:
                t_done = now
                break
            time.sleep(0.5)
        if t_done is None:
            raise TimeoutError("not all jobs sensed done in 30 minutes")
        # "Waiting": every job submitted and none finished yet, so no task has a reason
        # to be on a worker; with deferral the train tasks should hold no slot then.
        waiting = [s for s in samples if t_submitted <= s[0] < (t_first_done or t_done)]
        slot_seconds = sum((b[0] - a[0]) * a[2] for a, b in zip(samples, samples[1:],
                                                                strict=False))
        result = {
            "jobs": 52, "sleep_s": args.sleep, "parallelism": args.parallelism,
            "poll_s": args.poll,
            "seconds_until_plan_done": round(t_plan or 0, 1),
            "seconds_until_all_submitted": round(t_submitted, 1),
            "seconds_until_first_job_finished": round(t_first_done or 0, 1),
            "seconds_until_all_sensed_done": round(t_done, 1),
            "waiting_window_s": round((t_first_done or t_done) - t_submitted, 1),
            "worker_slots_held_while_waiting_max": max((s[2] for s in waiting), default=None),
            "waiting_samples": len(waiting),
            "waiting_samples_with_a_slot_held": sum(1 for s in waiting if s[2]),
            "worker_slot_seconds_all_train_tasks": round(slot_seconds, 1),
            "job_seconds_all_train_tasks": 52 * args.sleep,
            "deferred_max": max(s[3] for s in samples),
            "worker_slots_held_during_submission_max": max(s[2] for s in samples),
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
