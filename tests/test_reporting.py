"""Reporting end to end on a real MLflow store holding the seed-shaped reference sweep.

The sweep (configs/sweeps/reference.yaml: 52 runs x 467 steps, plus a diverged and a
failed run with tempting losses, plus base-model baselines) is logged once per module;
the analysis must recover the reference study's answers from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from synthetic_sweep import LoggedSweep, log_sweep

from reporting.analysis import analyse
from reporting.cache import HistoryCache
from reporting.cli import main
from reporting.config import ReportConfig
from reporting.fetch import HISTORY_KEYS, load_sweep
from reporting.findings import Findings
from reporting.history import fetch_histories
from reporting.pipeline import generate

SWEEP = "reference-synthetic"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LoggedSweep]]:
    folder = tmp_path_factory.mktemp("reporting-mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_REGRET_ARTIFACT_ROOT", str(folder / "artifacts"))
        logged = log_sweep(sweep_id=SWEEP, broken=True, tracking_uri=uri)
        yield uri, logged


@pytest.fixture(scope="module")
def findings(store: tuple[str, LoggedSweep]) -> Findings:
    uri, _ = store
    found, _ = analyse(load_sweep(MlflowClient(uri), SWEEP))
    return found


def _model(findings: Findings, name: str):
    return next(m for m in findings.models if m.model == name)


def test_analysis_recovers_reference_study(findings: Findings) -> None:
    m8, m70 = _model(findings, "apertus-8b"), _model(findings, "apertus-70b")
    assert [m.model for m in findings.models] == ["apertus-8b", "apertus-70b"]  # by size
    assert (m8.lora_best.lr, round(m8.lora_best.final_loss, 3)) == (1e-3, 0.717)
    assert (m8.full_best.lr, round(m8.full_best.final_loss, 3)) == (1e-4, 0.620)
    assert (m70.lora_best.lr, round(m70.lora_best.final_loss, 3)) == (1e-3, 0.621)
    assert (m70.full_best.lr, round(m70.full_best.final_loss, 3)) == (1e-5, 0.582)
    assert m8.lr_ratio == pytest.approx(10.0)
    assert m70.lr_ratio == pytest.approx(100.0)
    # The reference's gaps divide by LoRA's loss: (0.717-0.620)/0.717, (0.621-0.582)/0.621.
    assert round(m8.gap.pct, 1) == 13.5
    assert round(m70.gap.pct, 1) == 6.3
    assert round(m8.gap.pct_of_full, 1) == 15.6  # the other denominator would not match
    for m in (m8, m70):
        ri = m.rank_independence
        assert ri.rank_independent is True
        assert ri.common_lr == 1e-3
        assert {r.best_lr for r in ri.per_rank} == {1e-3}
        assert ri.high_rank_spread < 0.005
    assert m8.rank_independence.ranks == 10 and m70.rank_independence.ranks == 8
    assert findings.size_effect.gap_shrinks_with_size is True
    assert m8.max_seeds == 1 and m8.lora_best.within_noise_of_runner_up is None


def test_diverged_and_failed_runs_are_shown_but_kept_out(findings: Findings) -> None:
    m8 = _model(findings, "apertus-8b")
    excluded = {(e.method, e.outcome) for e in m8.excluded}
    assert excluded == {("full", "diverged"), ("lora", "failed")}
    assert all(e.lr == 1e-2 for e in m8.excluded)
    # Their losses (0.3, 0.5) are lower than any optimum: had they counted, they would win.
    assert m8.full_best.lr != 1e-2 and m8.lora_best.lr != 1e-2
    assert m8.n_runs == 35 and m8.n_usable == 33
    assert any("kept out" in s.text for s in findings.statements)


def test_report_lists_the_runs_that_did_not_finish(findings: Findings) -> None:
    from reporting.report import markdown

    rows = {r.run_name: r for r in findings.not_finished}
    assert {(r.method, r.outcome) for r in rows.values()} == {("full", "diverged"),
                                                              ("lora", "failed")}
    failed = next(r for r in rows.values() if r.outcome == "failed")
    assert (failed.job_state, failed.job_id) == ("FAILED", "synthetic-broken")
    assert "NCCL timeout" in failed.reason
    section = markdown(findings, {}).split("## Runs that did not finish")[1].split("\n## ")[0]
    assert f"2 of {findings.n_runs} runs did not finish (1 diverged, 1 failed)" in section
    for name, run in rows.items():
        assert name in section and run.reason[:20] in section


def test_trainable_fraction_per_rank(findings: Findings) -> None:
    rows = {r.rank: r for r in _model(findings, "apertus-8b").trainable}
    assert rows[32].under_1pct is True and rows[64].under_1pct is False
    assert rows[64].trainable_fraction == pytest.approx(0.0198, abs=1e-4)
    assert all(r.matches_preset for r in rows.values())
    rows70 = {r.rank: r for r in _model(findings, "apertus-70b").trainable}
    assert rows70[32].under_1pct is True and rows70[64].under_1pct is False


def test_lexam_tradeoff_and_baselines(findings: Findings) -> None:
    m8, m70 = _model(findings, "apertus-8b"), _model(findings, "apertus-70b")
    assert m8.baseline.accuracy == pytest.approx(0.271)
    assert m70.baseline.accuracy == pytest.approx(0.331)
    rows = {(t.method, t.lr): t for t in m8.tradeoff}
    assert rows[("lora", 1e-3)].accuracy_max == pytest.approx(0.043)
    assert rows[("lora", 1e-5)].accuracy_min == pytest.approx(0.26)
    # Lower loss came with lower retained accuracy, LR by LR.
    lora = sorted((t for t in m8.tradeoff if t.method == "lora"), key=lambda t: t.lr)
    assert [t.final_loss for t in lora] == sorted((t.final_loss for t in lora), reverse=True)
    assert [t.accuracy for t in lora] == sorted((t.accuracy for t in lora), reverse=True)


def test_final_loss_of_a_run_without_summary_comes_from_its_history(
        store: tuple[str, LoggedSweep]) -> None:
    uri, logged = store
    data = load_sweep(MlflowClient(uri), SWEEP)
    _, runs = analyse(data, window=10)
    failed = runs[runs["run_id"] == logged.run_ids["apertus-8b-lora-r64-lr0.01-s0"]].iloc[0]
    assert failed["final_loss_source"] == "history"
    losses = data.history[(data.history["run_id"] == failed["run_id"])
                          & (data.history["key"] == "train/loss")]["value"]
    assert failed["final_loss"] == pytest.approx(losses.iloc[-10:].mean())
    logged_runs = runs[runs["final_loss_source"] == "logged"]
    assert len(logged_runs) == 53


def test_history_backends_agree(store: tuple[str, LoggedSweep]) -> None:
    uri, logged = store
    client = MlflowClient(uri)
    ids = list(logged.run_ids.values())[:6]
    sql = fetch_histories(client, ids, HISTORY_KEYS, backend="sql")
    per_run = fetch_histories(client, ids, HISTORY_KEYS, backend="client")
    assert len(sql) == 6 * len(HISTORY_KEYS) * 467
    assert sql.equals(per_run)
    with pytest.raises(ValueError, match="history_backend"):
        fetch_histories(client, ids, HISTORY_KEYS, backend="carrier-pigeon")


def test_history_cache_refetches_only_changed_runs(store: tuple[str, LoggedSweep],
                                                    tmp_path: Path) -> None:
    uri, logged = store
    client = MlflowClient(uri)
    cache = HistoryCache(tmp_path / "cache")
    cold = load_sweep(client, SWEEP, cache=cache)
    assert (cold.cache_hits, cold.fetched) == (0, 54)
    warm = load_sweep(client, SWEEP, cache=cache)
    assert (warm.cache_hits, warm.fetched) == (54, 0)
    assert warm.history.equals(cold.history)
    # A run that logs another step is read again; the others stay cached.
    run_id = logged.run_ids["apertus-70b-full-lr1e-05-s0"]
    client.log_batch(run_id, metrics=[Metric("train/loss", 0.5, int(time.time() * 1000), 468)])
    again = load_sweep(client, SWEEP, cache=cache)
    assert (again.cache_hits, again.fetched) == (53, 1)
    steps = again.history[(again.history["run_id"] == run_id)
                          & (again.history["key"] == "train/loss")]["step"]
    assert steps.max() == 468
    assert len(list((tmp_path / "cache").glob(f"{run_id}.*.parquet"))) == 1


def test_cli_writes_report_and_logs_report_run(store: tuple[str, LoggedSweep],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = store
    out = tmp_path / "reports"
    assert main(["--sweep-id", SWEEP, "--output-dir", str(out), "--tracking-uri", uri]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = out / SWEEP
    for name in ("lr_sweep", "learning_curves", "tradeoff", "trainable_fraction"):
        png, svg = folder / f"{name}.png", folder / f"{name}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
        assert "<svg" in svg.read_text()[:2000]
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert 'src="lr_sweep.png"' not in page  # self-contained
    text = (folder / "report.md").read_text()
    assert "13.5%" in text and "6.3%" in text and "10x" in text and "100x" in text
    saved = json.loads((folder / "findings.json").read_text())
    assert saved["sweep_id"] == SWEEP
    assert {m["model"]: round(m["gap"]["pct"], 1) for m in saved["models"]} == {
        "apertus-8b": 13.5, "apertus-70b": 6.3}

    client = MlflowClient(uri)
    run = client.get_run(summary["report_run_id"])
    assert run.data.tags["kind"] == "report" and run.data.tags["sweep_id"] == SWEEP
    assert run.data.metrics["report/apertus-8b/lr_ratio"] == pytest.approx(10.0)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "findings.json", "lr_sweep.png"} <= artifacts
    # The report run is not a sweep run: reporting again still sees 54 training runs.
    assert len(load_sweep(client, SWEEP).runs) == 54


def test_all_sweeps_and_index(store: tuple[str, LoggedSweep], tmp_path: Path) -> None:
    uri, _ = store
    log_sweep(_small_sweep(), sweep_id="small", tracking_uri=uri, steps=30, baselines=False)
    reports = generate(ReportConfig(tracking_uri=uri, output_dir=tmp_path, log_to_mlflow=False))
    assert [r.sweep_id for r in reports] == ["reference-synthetic", "small"]
    assert "small/report.html" in (tmp_path / "index.md").read_text()
    small = reports[1].findings
    assert small.models[0].full_best is None and small.models[0].lr_ratio is None
    assert (tmp_path / "small" / "report.md").stat().st_size > 500


def _small_sweep():
    from contracts.sweep import parse_sweep

    return parse_sweep({"name": "small", "grids": [
        {"models": ["apertus-8b"], "methods": ["lora"], "learning_rates": [1e-4, 1e-3],
         "ranks": [8, 64]}]})


def test_cli_help_and_errors(tmp_path: Path, mlflow_uri: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    helped = subprocess.run([sys.executable, "-m", "reporting", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--sweep-id" in helped.stdout and "MLFLOW_TRACKING_URI" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "reporting", "--sweep-id", "x; rm -rf /",
                          "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "sweep_ids" in bad.stderr
    assert main(["--sweep-id", "nope", "--output-dir", str(tmp_path)]) == 3
    assert "no training runs tagged sweep_id='nope'" in capsys.readouterr().err
    assert main(["--all", "--output-dir", str(tmp_path), "--experiment", "absent"]) == 3
    assert "no MLflow experiment named 'absent'" in capsys.readouterr().err


@pytest.mark.slow
def test_rest_store_reads_histories_in_batches(store: tuple[str, LoggedSweep],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a real `mlflow server`: the get-history-bulk-interval path (and its per-run
    fallback for runs longer than the endpoint's limit) returns what SQL returns."""
    import socket
    import urllib.request

    import reporting.history as history

    uri, _ = store
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(1)
        rest = MlflowClient(f"http://127.0.0.1:{port}")
        assert history.store_kind(rest) == "rest"
        expected = load_sweep(MlflowClient(uri), SWEEP).history
        assert load_sweep(rest, SWEEP).history.equals(expected)
        monkeypatch.setattr(history, "REST_MAX_STEPS", 100)  # every run is "long" now
        assert load_sweep(rest, SWEEP).history.equals(expected)
    finally:
        server.terminate()
        server.wait(timeout=30)
