"""Drives the demo through Airflow's REST API, as a user's script would.

Waits for MLflow and Airflow to be healthy, triggers ``lora_regret_sweep`` with a small
CPU grid on the local job backend, prints progress until the sweep and the report it
schedules are done, then says where to look. Settings come from the environment that
``scripts/demo.sh`` exports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
STATE = Path(os.environ.get("LORA_REGRET_STATE", ROOT / ".state" / "demo"))
AIRFLOW = f"http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '8080')}"
MLFLOW = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "2400"))
DONE = {"success", "failed"}
UNFINISHED = {None, "none", "scheduled", "queued", "running", "deferred", "up_for_retry",
              "up_for_reschedule", "restarting"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for(what: str, check, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not come up within {timeout:.0f} s; see {STATE}/logs/")
        time.sleep(2)


def admin_password_file() -> Path:
    return Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"


def admin_password() -> str:
    path = admin_password_file()
    wait_for("Airflow's admin password file", path.is_file)
    path.chmod(0o600)
    return json.loads(path.read_text())["admin"]


def demo_conf() -> dict:
    sjp = SHARED / "sjp_sample" / "cases.jsonl"
    lexam = SHARED / "lexam" / "mcq_4_choices_test.jsonl"
    return {
        "sweep": os.environ["DEMO_SWEEP"],
        "models": [os.environ["DEMO_MODEL"]],
        "max_steps": int(os.environ["DEMO_MAX_STEPS"]),
        "data_source": str(sjp) if sjp.is_file() else "synthetic",
        "cluster": "local",
        "eval_max_questions": int(os.environ["DEMO_EVAL_QUESTIONS"]),
        "eval_max_new_tokens": int(os.environ["DEMO_EVAL_MAX_NEW_TOKENS"]),
        "eval_data": str(lexam) if lexam.is_file() else "synthetic",
        "eval_backend": os.environ.get("DEMO_EVAL_BACKEND", "transformers"),
    }


class Airflow:
    def __init__(self, password: str) -> None:
        self.http = httpx.Client(base_url=AIRFLOW, timeout=30)
        token = self.http.post("/auth/token", json={"username": "admin", "password": password})
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def get(self, path: str, **params) -> dict:
        response = self.http.get(f"/api/v2{path}", params=params)
        response.raise_for_status()
        return response.json()

    def trigger(self, dag_id: str, conf: dict) -> str:
        response = self.http.post(f"/api/v2/dags/{dag_id}/dagRuns",
                                  json={"logical_date": None, "conf": conf})
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                        limit=1000)["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> Counter:
        return Counter(f"{ti['task_id']}:{ti['state'] or 'none'}"
                       for ti in self.task_instances(dag_id, run_id))


def unfinished_tasks(task_instances: list[dict]) -> list[str]:
    """``task[run name]: state`` for every task instance that has not ended."""
    lines = []
    for ti in sorted(task_instances, key=lambda t: (t["task_id"], t.get("map_index", -1))):
        if ti.get("state") in UNFINISHED:
            label = ti.get("rendered_map_index") or (
                str(ti["map_index"]) if ti.get("map_index", -1) >= 0 else "")
            name = f"{ti['task_id']}[{label}]" if label else ti["task_id"]
            lines.append(f"{name}: {ti.get('state') or 'not started'}")
    return lines


def local_jobs() -> list[Path]:
    """Log files of the local jobs that still run or wait (the demo's `local` profile)."""
    from cluster_jobs.local import LocalJobs

    from contracts.profiles import load_profile

    jobs = LocalJobs(load_profile("local"))
    return [jobs.job_dir(job) / "job.log" for job in jobs.running_jobs()]


def timeout_message(dag_id: str, run_id: str, tasks: list[str], logs: list[Path],
                    timeout_s: float = TIMEOUT_S) -> str:
    """What a user needs when the demo gives up waiting: what still runs, how to follow
    it, and how to stop it."""
    lines = [f"{dag_id} run {run_id} did not finish within {timeout_s:.0f} s "
             "(DEMO_TIMEOUT_S); it keeps running in the background.", ""]
    lines += ["Tasks not finished yet:", *[f"  {t}" for t in tasks or ["(none)"]], ""]
    if logs:
        lines += ["Local jobs still running or waiting (follow one with tail -f):",
                  *[f"  {log}" for log in logs], ""]
    lines += [f"Follow it in the Airflow UI: {AIRFLOW}/dags/{dag_id}/runs/{run_id}",
              "Stop everything, the local jobs included: make down"]
    return "\n".join(lines)


def follow(airflow: Airflow, dag_id: str, run_id: str, deadline: float) -> str:
    last = None
    while time.monotonic() < deadline:
        state = airflow.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        tasks = airflow.task_states(dag_id, run_id)
        line = f"{dag_id} {state}: " + ", ".join(f"{k} x{v}" for k, v in sorted(tasks.items()))
        if line != last:
            say(line)
            last = line
        if state in DONE:
            return state
        time.sleep(5)
    sys.exit(timeout_message(dag_id, run_id,
                             unfinished_tasks(airflow.task_instances(dag_id, run_id)),
                             local_jobs()))


def newest_report_run(airflow: Airflow, after: str) -> str | None:
    runs = airflow.get("/dags/lora_regret_report/dagRuns", order_by="-run_after",
                       limit=5)["dag_runs"]
    fresh = [r for r in runs if (r.get("run_after") or "") >= after]
    return fresh[0]["dag_run_id"] if fresh else None


def main() -> int:
    started = time.monotonic()
    deadline = started + TIMEOUT_S
    wait_for("MLflow", lambda: httpx.get(f"{MLFLOW}/health", timeout=5).status_code == 200)
    say(f"MLflow is up: {MLFLOW}")
    wait_for("Airflow", lambda: httpx.get(f"{AIRFLOW}/api/v2/monitor/health",
                                          timeout=5).status_code == 200)
    password = admin_password()
    airflow = Airflow(password)
    say(f"Airflow is up: {AIRFLOW}")
    for dag_id in ("lora_regret_sweep", "lora_regret_report"):
        # Freshly parsed DAGs can answer 500 for a moment: retry until unpaused.
        wait_for(f"DAG {dag_id}", lambda d=dag_id: airflow.http.patch(
            f"/api/v2/dags/{d}", json={"is_paused": False}).status_code == 200, timeout=180)

    conf = demo_conf()
    say(f"trigger conf: {json.dumps(conf)}")
    run_id = airflow.trigger("lora_regret_sweep", conf)
    triggered_at = airflow.get(f"/dags/lora_regret_sweep/dagRuns/{run_id}")["run_after"]
    sweep_state = follow(airflow, "lora_regret_sweep", run_id, deadline)
    if sweep_state != "success":
        say(f"the sweep failed: open {AIRFLOW}/dags/lora_regret_sweep/runs/{run_id}")
        if airflow.task_states("lora_regret_sweep", run_id).get("publish:success", 0) == 0:
            return 1
        say("its results were published all the same (the report lists the failed runs)")

    say("waiting for lora_regret_report (scheduled on the sweep-results asset)")
    wait_for("the report DAG run", lambda: newest_report_run(airflow, triggered_at),
             timeout=max(60, deadline - time.monotonic()))
    report_run = newest_report_run(airflow, triggered_at)
    report_state = follow(airflow, "lora_regret_report", report_run, deadline)

    reports = Path(os.environ.get("LORA_REGRET_REPORTS_DIR", STATE / "reports"))
    newest = max(reports.glob("*/report.html"), key=lambda p: p.stat().st_mtime, default=None)
    minutes = (time.monotonic() - started) / 60
    print(f"""
Done in {minutes:.1f} min (sweep {sweep_state}, report {report_state}).

  Airflow UI   {AIRFLOW}    login: admin, password in {admin_password_file()}
               (readable by you only; Airflow wrote it when it started)
  MLflow UI    {MLFLOW}     experiment 'lora-regret', registered models 'lora-regret-*'
  Report       {newest or reports}  (also logged to MLflow as a run tagged kind=report)

Stop everything with: make down
""", flush=True)
    return 0 if report_state == "success" and sweep_state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
