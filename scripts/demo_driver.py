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
STATE = Path(os.environ["LORA_REGRET_STATE"])
AIRFLOW = f"http://127.0.0.1:{os.environ['AIRFLOW_PORT']}"
MLFLOW = f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "2400"))
DONE = {"success", "failed"}


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

    def task_states(self, dag_id: str, run_id: str) -> Counter:
        items = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                         limit=1000)["task_instances"]
        return Counter(f"{ti['task_id']}:{ti['state'] or 'none'}" for ti in items)


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
    sys.exit(f"{dag_id} run {run_id} did not finish within {TIMEOUT_S:.0f} s")


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
    if follow(airflow, "lora_regret_sweep", run_id, deadline) != "success":
        say(f"the sweep failed: open {AIRFLOW}/dags/lora_regret_sweep/runs/{run_id}")
        return 1

    say("waiting for lora_regret_report (scheduled on the sweep-results asset)")
    wait_for("the report DAG run", lambda: newest_report_run(airflow, triggered_at),
             timeout=max(60, deadline - time.monotonic()))
    report_run = newest_report_run(airflow, triggered_at)
    report_state = follow(airflow, "lora_regret_report", report_run, deadline)

    reports = Path(os.environ.get("LORA_REGRET_REPORTS_DIR", STATE / "reports"))
    newest = max(reports.glob("*/report.html"), key=lambda p: p.stat().st_mtime, default=None)
    minutes = (time.monotonic() - started) / 60
    print(f"""
Done in {minutes:.1f} min (sweep success, report {report_state}).

  Airflow UI   {AIRFLOW}    login: admin / {password}
               (password file: {admin_password_file()})
  MLflow UI    {MLFLOW}     experiment 'lora-regret', registered models 'lora-regret-*'
  Report       {newest or reports}  (also logged to MLflow as a run tagged kind=report)

Stop everything with: make down
""", flush=True)
    return 0 if report_state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
