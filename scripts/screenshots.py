"""Screenshots of the running demo for the README (Airflow trigger form, MLflow runs).

Needs Debian's chromium and the `playwright` Python package (not a project dependency):
    apt-get install chromium && pip install playwright
    python scripts/screenshots.py   # while `make demo`'s services are up
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("LORA_REGRET_STATE", ROOT / ".state" / "demo"))
AIRFLOW = f"http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '8080')}"
MLFLOW = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
OUT = ROOT / "docs" / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def main() -> int:
    password_file = STATE / "airflow" / "simple_auth_manager_passwords.json.generated"
    password = json.loads(password_file.read_text())["admin"]
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        page.goto(f"{AIRFLOW}/dags/lora_regret_sweep")
        page.wait_for_load_state("networkidle")
        if "/auth/login" in page.url:
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state("networkidle")
            page.goto(f"{AIRFLOW}/dags/lora_regret_sweep")
            page.wait_for_load_state("networkidle")
        page.get_by_role("button", name="Trigger Dag").first.click()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(OUT / "airflow-trigger-form.png"))

        page.goto(f"{AIRFLOW}/dags/lora_regret_sweep/runs")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(OUT / "airflow-sweep-runs.png"))

        experiment = httpx.get(f"{MLFLOW}/api/2.0/mlflow/experiments/get-by-name",
                               params={"experiment_name": "lora-regret"}).json()["experiment"]
        # The MLflow UI keeps polling, so wait for the table instead of network idleness.
        page.goto(f"{MLFLOW}/#/experiments/{experiment['experiment_id']}/runs")
        page.get_by_text("Run Name").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        assistant = page.get_by_text("MLflow Assistant")
        if assistant.count():  # a side panel that would hide half of the run table
            page.locator("button[aria-label*='lose']").last.click()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(OUT / "mlflow-runs.png"))
        browser.close()
    print(f"screenshots in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
