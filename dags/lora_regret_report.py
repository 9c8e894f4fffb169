"""lora_regret_report: regenerate a sweep's findings and figures from MLflow.

Runs whenever ``lora_regret_sweep`` updates the sweep-results Asset (the sweep id comes
from the asset event's extra), or by hand with a ``sweep_id`` (empty: every sweep).
Each sweep's report (figures, report.md, report.html, findings.json) is written to
``$LORA_REGRET_REPORTS_DIR/<sweep_id>/`` and logged to MLflow as a run tagged
``kind=report``. MLflow is read from ``MLFLOW_TRACKING_URI``. The logic lives in
``reporting``; this file wires. The form is generated from contracts.conf.ReportConf.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task

from contracts.conf import ReportConf
from contracts.forms import form_fields
from contracts.names import SWEEP_RESULTS_ASSET

SWEEP_RESULTS = Asset(**SWEEP_RESULTS_ASSET)


@dag(
    dag_id="lora_regret_report",
    schedule=[SWEEP_RESULTS],
    catchup=False,
    max_active_runs=1,
    tags=["lora-regret", "reporting"],
    params={name: Param(field.pop("default"), **field)
            for name, field in form_fields(ReportConf).items()},
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
)
def lora_regret_report() -> None:
    @task
    def sweeps_to_report(params: dict[str, Any] | None = None,
                         triggering_asset_events: Any = None) -> list[str]:
        """Sweep ids from the hand-given param or the asset events; [] = all sweeps."""
        from airflow.sdk.exceptions import AirflowFailException

        from contracts.conf import parse_report_conf
        from contracts.errors import SpecError
        from reporting.triggers import sweep_ids_to_report

        extras = [event.extra for events in (triggering_asset_events or {}).values()
                  for event in events]
        try:
            conf = parse_report_conf(dict(params or {}))
            return sweep_ids_to_report(conf.sweep_id, extras)
        except (SpecError, ValueError) as error:
            raise AirflowFailException(str(error)) from None

    @task
    def regenerate(sweep_ids: list[str]) -> list[dict[str, Any]]:
        """Write and log one report per sweep (every sweep when the list is empty)."""
        from reporting.config import ReportConfig
        from reporting.pipeline import generate

        reports = generate(ReportConfig(sweep_ids=tuple(sweep_ids)))
        return [report.summary() for report in reports]

    regenerate(sweeps_to_report())


lora_regret_report()
