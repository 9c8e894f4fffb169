"""lora_regret_report in real Airflow: DagBag import, schedule on the sweep-results Asset,
dag.test() against a real MLflow store, sweep ids from real asset-event objects."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from synthetic_sweep import log_sweep

from contracts.sweep import parse_sweep

DAG_ID = "lora_regret_report"
SMALL = parse_sweep({"name": "dagtest", "grids": [
    {"models": ["apertus-8b"], "methods": ["lora"], "learning_rates": [1e-4, 1e-3],
     "ranks": [8, 64]},
    {"models": ["apertus-8b"], "methods": ["full"], "learning_rates": [1e-5, 1e-4]}]})


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


@pytest.mark.airflow
def test_dag_is_scheduled_on_the_sweep_results_asset(airflow_db: Path) -> None:
    from airflow.sdk import Asset

    dag = load_dag()
    assert list(dag.timetable.asset_condition.objects) == [
        Asset(name="lora_regret_sweep_results", uri="lora-regret://sweep-results")]
    assert dag.params.get_param("sweep_id").value is None


@pytest.mark.airflow
def test_dag_test_writes_and_logs_the_report(airflow_db: Path, mlflow_uri: str,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reports = tmp_path / "reports"
    monkeypatch.setenv("LORA_REGRET_REPORTS_DIR", str(reports))
    log_sweep(SMALL, sweep_id="dagtest", steps=40, tracking_uri=mlflow_uri, baselines=False)
    run = load_dag().test(run_conf={"sweep_id": "dagtest"})
    assert run.state == "success", states(run)
    folder = reports / "dagtest"
    assert (folder / "report.html").stat().st_size > 10_000
    assert (folder / "lr_sweep.png").stat().st_size > 10_000
    client = MlflowClient(mlflow_uri)
    logged = client.search_runs(
        [client.get_experiment_by_name("lora-regret").experiment_id],
        "tags.kind = 'report' and tags.sweep_id = 'dagtest'")
    assert len(logged) == 1
    assert logged[0].data.metrics["report/apertus-8b/lr_ratio"] == pytest.approx(10.0)


@pytest.mark.airflow
def test_bad_sweep_id_is_refused_by_the_form(airflow_db: Path, mlflow_uri: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        load_dag().test(run_conf={"sweep_id": "x; touch pwned"})
    assert not Path("pwned").exists()


def _event(extra: dict):
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    # As stored by Airflow: the Asset's normalised URI (a trailing slash is added).
    asset = Asset(name="lora_regret_sweep_results", uri="lora-regret://sweep-results")
    return AssetEventDagRunReferenceResult.model_validate({
        "asset": {"name": asset.name, "uri": asset.uri, "extra": {}},
        "extra": extra, "source_task_id": "publish", "source_dag_id": "lora_regret_sweep",
        "source_run_id": "manual__1", "source_map_index": -1, "source_aliases": [],
        "timestamp": datetime.now(UTC),
    })


@pytest.mark.airflow
def test_sweep_ids_come_from_the_triggering_asset_events(airflow_db: Path) -> None:
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    task = load_dag().get_task("sweeps_to_report")
    events = TriggeringAssetEventsAccessor.build(
        [_event({"sweep_id": "reference"}), _event({"sweep_id": "demo-cpu"}),
         _event({"sweep_id": "reference"})])
    pick = task.python_callable
    assert pick(params={"sweep_id": None}, triggering_asset_events=events) == [
        "reference", "demo-cpu"]
    assert pick(params={"sweep_id": "by-hand"}, triggering_asset_events=events) == ["by-hand"]
    assert pick(params={"sweep_id": None},
                triggering_asset_events=TriggeringAssetEventsAccessor.build([])) == []
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="sweep_id"):  # fails fast, no retry
        pick(params={}, triggering_asset_events=TriggeringAssetEventsAccessor.build(
            [_event({"sweep_id": "$(reboot)"})]))


# A seed-shaped sweep (tests/synthetic_sweep.py) with 3 seeds and checkpoint evaluations.
SEEDED = parse_sweep({"name": "forgetting", "grids": [
    {"models": ["apertus-8b"], "methods": ["lora"], "learning_rates": [1e-5, 1e-4, 1e-3],
     "ranks": [8, 64], "seeds": [0, 1, 2]},
    {"models": ["apertus-8b"], "methods": ["full"], "learning_rates": [1e-5, 1e-4],
     "seeds": [0, 1, 2]}]})


@pytest.mark.airflow
def test_dag_test_reports_forgetting_curves_and_the_recommendation(
        airflow_db: Path, mlflow_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    reports = tmp_path / "reports"
    monkeypatch.setenv("LORA_REGRET_REPORTS_DIR", str(reports))
    logged = log_sweep(SEEDED, sweep_id="forgetting", checkpoints=True, register=True,
                       seed_sd=0.01, tracking_uri=mlflow_uri)
    run = load_dag().test(run_conf={"sweep_id": "forgetting"})
    assert run.state == "success", states(run)
    folder = reports / "forgetting"
    for figure in ("forgetting_curves", "task_vs_retention"):
        assert (folder / f"{figure}.png").stat().st_size > 10_000, figure
    html = (folder / "report.html").read_text()
    assert "Recommended recipe" in html and "Forgetting over training" in html
    heldout = json.loads((folder / "findings.json").read_text())["models"][0]["heldout"]

    # Curves: every configuration at the checkpoint steps and its final step, over 3 seeds.
    assert len(heldout["curves"]) == 8
    for curve in heldout["curves"]:
        assert [p["step"] for p in curve["points"]] == [100, 200, 300, 400, 467]
        assert all(p["n_seeds"] == 3 and p["sjp_macro_f1_std"] for p in curve["points"])
    # Forgetting: LoRA at 1e-3 and 1e-4 lose LEXam from the first checkpoint, 1e-5 never.
    drops = {(d["method"], d["lr"]): d["first_step"] for d in heldout["retention"]}
    assert drops[("lora", 1e-3)] == drops[("lora", 1e-4)] == drops[("full", 1e-4)] == 100
    assert drops[("lora", 1e-5)] is None and drops[("full", 1e-5)] is None
    # Training-loss order vs held-out order: the synthetic shape makes them disagree.
    assert heldout["loss_order"]["n_runs"] == 24 and heldout["loss_order"]["agrees"] is False

    # The recommendation follows its rule, checked against the curves themselves.
    recommendation = heldout["recommendation"]
    base = recommendation["base_accuracy"]
    within = [(p["sjp_macro_f1"], c["method"], c["lr"], p["step"]) for c in heldout["curves"]
              for p in c["points"] if p["lexam_accuracy"] >= base - recommendation["margin"]]
    best = recommendation["best"]
    assert max(within)[0] == pytest.approx(best["sjp_macro_f1"])
    assert (best["method"], best["lr"], best["step"], best["final"]) == ("full", 1e-5, 467, True)
    assert best["n_seeds"] == 3 and not recommendation["single_seed"]
    assert recommendation["runner_up"]["sjp_macro_f1"] <= best["sjp_macro_f1"]
    # The Pareto front: both extremes are on it, and no run beats a front point on both.
    points = heldout["tradeoff"]
    front = [p for p in points if p["pareto"]]
    assert max(points, key=lambda p: p["sjp_macro_f1"]) in front
    assert max(points, key=lambda p: (p["retention"], p["sjp_macro_f1"])) in front
    assert not any(q["retention"] >= p["retention"] and q["sjp_macro_f1"] > p["sjp_macro_f1"]
                   for p in front for q in points)
    # Its registry version carries the alias, and the MLflow report run names it.
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias("lora-regret-apertus-8b-full", "recommended")
    assert version.run_id == best["best_run_id"] in logged.run_ids.values()
    report_run = client.search_runs(
        [client.get_experiment_by_name("lora-regret").experiment_id],
        "tags.kind = 'report' and tags.sweep_id = 'forgetting'")[0]
    assert report_run.data.tags["recommended/apertus-8b"] == "full lr 1e-05 step 467"
    assert report_run.data.metrics["report/apertus-8b/recommended_sjp_macro_f1"] == \
        pytest.approx(best["sjp_macro_f1"])
