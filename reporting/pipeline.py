"""Regenerate a sweep's report: MLflow -> tables -> findings -> figures -> files -> MLflow."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from contracts.redact import redact
from reporting.analysis import analyse, state
from reporting.cache import HistoryCache
from reporting.config import NothingToReport, ReportConfig
from reporting.fetch import experiment_ids, list_sweep_ids, load_sweep
from reporting.figures import draw_all
from reporting.findings import Findings
from reporting.publish import publish
from reporting.recommend import mark_recommended
from reporting.report import write_report

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one regeneration produced (returned to the CLI and the DAG)."""

    sweep_id: str
    report_dir: Path
    files: list[Path]
    n_runs: int
    cache_hits: int
    fetched: int
    seconds: dict[str, float] = field(default_factory=dict)
    report_run_id: str | None = None
    findings: Findings | None = None

    def summary(self) -> dict:
        return {"sweep_id": self.sweep_id, "report_dir": str(self.report_dir),
                "files": [p.name for p in self.files], "n_runs": self.n_runs,
                "cache_hits": self.cache_hits, "fetched": self.fetched,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "report_run_id": self.report_run_id}


def generate_sweep(client: MlflowClient, config: ReportConfig, sweep_id: str) -> SweepReport:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    cache = HistoryCache(config.resolved_cache_dir)
    data = load_sweep(client, sweep_id, experiment=config.experiment, cache=cache,
                      backend=config.history_backend)
    timings["fetch"] = time.perf_counter() - start
    mark = time.perf_counter()
    findings, runs = analyse(data, config.final_loss_window, config.retention_margin,
                             config.retention_metric)
    timings["analyse"] = time.perf_counter() - mark
    if config.set_alias and config.log_to_mlflow:
        mark = time.perf_counter()
        mark_recommended(client, findings, runs)
        state(findings)
        timings["alias"] = time.perf_counter() - mark
    out_dir = config.output_dir / sweep_id
    mark = time.perf_counter()
    figures = draw_all(runs, data.history, findings, out_dir, config.smoothing_window)
    timings["figures"] = time.perf_counter() - mark
    log.info("sweep %s: %d figures drawn", sweep_id, len(figures))
    mark = time.perf_counter()
    paths = write_report(findings, figures, out_dir)
    timings["report"] = time.perf_counter() - mark
    files = [p for ps in figures.values() for p in ps] + list(paths.values())
    report = SweepReport(sweep_id=sweep_id, report_dir=out_dir, files=files,
                         n_runs=len(data.runs), cache_hits=data.cache_hits,
                         fetched=data.fetched, findings=findings)
    if config.log_to_mlflow and data.experiment_id:
        mark = time.perf_counter()
        report.report_run_id = publish(client, data.experiment_id, findings, out_dir)
        timings["publish"] = time.perf_counter() - mark
        log.info("sweep %s: report logged to MLflow run %s", sweep_id, report.report_run_id)
    timings["total"] = time.perf_counter() - start
    report.seconds = timings
    log.info("sweep %s: report in %s (%.1f s)", sweep_id, out_dir, timings["total"])
    return report


def generate(config: ReportConfig) -> list[SweepReport]:
    """Reports for the configured sweeps, or for every sweep found when none is named."""
    client = MlflowClient(tracking_uri=config.tracking_uri)
    sweep_ids = list(config.sweep_ids)
    if not sweep_ids:
        sweep_ids = list_sweep_ids(client, experiment_ids(client, config.experiment))
        if not sweep_ids:
            raise NothingToReport(f"no sweeps with training runs in {redact(config.tracking_uri)}")
    log.info("reporting %d sweep(s) from %s: %s", len(sweep_ids), redact(config.tracking_uri),
             ", ".join(sweep_ids))
    reports = []
    for index, sweep_id in enumerate(sweep_ids, 1):
        log.info("[%d/%d] sweep %s", index, len(sweep_ids), sweep_id)
        reports.append(generate_sweep(client, config, sweep_id))
    if len(reports) > 1:
        write_index(reports, config.output_dir)
    return reports


def write_index(reports: list[SweepReport], output_dir: Path) -> Path:
    """index.md: one line per sweep report, for ``--all``."""
    lines = ["# Sweep reports", ""]
    for r in reports:
        headline = ""
        if r.findings and r.findings.statements:
            headline = " - " + r.findings.statements[0].text.replace("|", "\\|")
        lines.append(f"- [{r.sweep_id}]({r.sweep_id}/report.html) ({r.n_runs} runs){headline}")
    path = output_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path
