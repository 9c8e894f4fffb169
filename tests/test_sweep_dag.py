"""The lora_regret_sweep DAG on real Airflow: import, conf validation (untrusted input),
the MLflow lookup of finished runs, and dag.test() end to end on the local backend."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.conf import parse_conf, plan_runs
from contracts.presets import load_presets
from contracts.spec import RunSpec, SpecError
from tracking.runs import finished_spec_hashes, pending_specs

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "lora_regret_sweep"
INJECTIONS = ['"; rm -rf / #', "$(id)", "`id`", "a\nb", "x; touch /tmp/pwned", "|id",
              "${IFS}id", "--help", "a b", "x'y", "&& id"]
# Every string-valued conf field, and how a payload is placed in it.
STRING_FIELDS: dict[str, Any] = {
    "sweep": lambda p: p, "models": lambda p: [p], "methods": lambda p: ["lora", p],
    "data_source": lambda p: p, "experiment": lambda p: p, "sweep_id": lambda p: p,
    "cluster": lambda p: p, "eval_data": lambda p: p,
}


# -- conf validation (no Airflow needed) -------------------------------------------------

@pytest.mark.parametrize("field", sorted(STRING_FIELDS))
@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_payloads_are_rejected_naming_the_field(field: str, payload: str) -> None:
    with pytest.raises(SpecError) as error:
        plan_runs(parse_conf({"sweep": "tiny", field: STRING_FIELDS[field](payload)}))
    assert field in str(error.value)


def test_default_conf_is_the_reference_grid() -> None:
    specs = plan_runs(parse_conf({}))
    assert len(specs) == 52
    assert sum(s.method == "full" for s in specs) == 6
    assert all(s.rank is None for s in specs if s.method == "full")


def test_overrides_replace_axes_and_give_a_stable_sweep_id() -> None:
    conf = {"sweep": "tiny", "learning_rates": [1e-4], "ranks": [4], "seeds": [0, 1],
            "max_steps": 3}
    first, second = parse_conf(conf), parse_conf(dict(conf))
    specs = plan_runs(first)
    assert [(s.lr, s.rank, s.seed, s.max_steps) for s in specs] == [
        (1e-4, 4, 0, 3), (1e-4, 4, 1, 3)]
    assert first.derived_sweep_id() == second.derived_sweep_id() != "tiny"
    assert parse_conf({"sweep": "tiny"}).derived_sweep_id() == "tiny"
    assert parse_conf({"sweep": "tiny", "models": [], "ranks": None}).overrides() == {}


def test_bad_values_name_their_field() -> None:
    for conf, field in [({"learning_rates": [0.1, -1]}, "learning_rates.1"),
                        ({"ranks": [3]}, "ranks"), ({"max_steps": 0}, "max_steps"),
                        ({"models": ["gpt-5"]}, "models"), ({"typo": 1}, "typo"),
                        ({"force": "yes please"}, "force")]:
        with pytest.raises(SpecError, match=field):
            parse_conf(conf)


def test_finished_lookup_in_mlflow(mlflow_uri: str) -> None:
    import mlflow

    specs = plan_runs(parse_conf({"sweep": "tiny"}))
    outcomes = {specs[0].spec_hash: "finished", specs[1].spec_hash: "diverged",
                specs[2].spec_hash: "running"}
    mlflow.set_experiment(specs[0].experiment)
    for spec_hash, outcome in outcomes.items():
        with mlflow.start_run(tags={"spec_hash": spec_hash, "outcome": outcome}):
            pass
    other = RunSpec(model="tiny-apertus", method="full", lr=1e-3, experiment="elsewhere")
    assert finished_spec_hashes([*specs, other]) == {specs[0].spec_hash}
    assert pending_specs(specs) == specs[1:]


# -- real Airflow ------------------------------------------------------------------------

@pytest.fixture
def sweep_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> Path:
    """A `local` profile whose job and checkpoint folders are private to the test."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    local = yaml.safe_load((REPO_ROOT / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), outputs_dir=str(tmp_path / "runs"),
                 poll_interval=0.5)
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))
    return tmp_path


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def job_folders(sweep_env: Path) -> list[str]:
    """One folder per submitted job (hidden entries are the backend's own, e.g. .slots)."""
    return sorted(p.name for p in (sweep_env / "jobs").iterdir() if not p.name.startswith("."))


def states(dag_run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


@pytest.mark.airflow
def test_every_dag_file_imports(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    assert bag.import_errors == {}
    assert DAG_ID in bag.dag_ids
    dag = bag.get_dag(DAG_ID)
    defaults = {name: param.value for name, param in dag.params.items()}
    assert defaults["sweep"] == "reference" and defaults["force"] is False
    assert len(plan_runs(parse_conf(defaults))) == 52
    # The form offers the known presets and methods as multi-selects.
    assert dag.params.get_param("models").schema["examples"] == sorted(load_presets())
    assert dag.params.get_param("methods").schema["examples"] == ["lora", "full"]
    # Each run's task starts in the triggerer, finding its job in `submit`'s output; the
    # scheduler works from the serialized DAG, so that is what must say so.
    from airflow.serialization.serialized_objects import BaseSerialization, DagSerialization

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    for task_id in ("train", "evaluate"):
        task = scheduler_dag.get_task(task_id)
        assert task.start_from_trigger is True
        kwargs = BaseSerialization.deserialize(task.start_trigger_args.trigger_kwargs)
        assert kwargs == {
            "submitted_by": "submit", "group": task_id, "poll_interval": None}
        assert task.start_trigger_args.trigger_cls == "cluster_jobs.trigger.ClusterJobTrigger"
    assert {t.task_id for t in dag.tasks} >= {
        "plan", "submit", "record", "publish", "verdict", "evaluate_runs",
        *(f"train_runs_{k}" for k in range(1, 5))}
    assert dag.get_task("verdict").trigger_rule == "all_done"


@pytest.mark.airflow
@pytest.mark.parametrize("field", ["data_source", "models", "sweep_id", "cluster"])
def test_invalid_conf_submits_nothing(field: str, airflow_db: Path, sweep_env: Path) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = load_dag()
    conf = {"sweep": "tiny", "evaluate": False, field: STRING_FIELDS[field]("$(touch pwned)")}
    try:
        run = dag.test(run_conf=conf)
    except ParamValidationError:
        run = None  # the form's schema refused it before a run existed
    if run is not None:
        assert run.state == "failed"
        got = states(run)
        assert got["plan"] == ["failed"] and got["train"] == ["upstream_failed"]
    assert not (sweep_env / "jobs").exists()
    assert not list(REPO_ROOT.glob("pwned")) and not Path("pwned").exists()


@pytest.mark.airflow
@pytest.mark.slow
def test_tiny_grid_end_to_end_then_nothing_new(airflow_db: Path, sweep_env: Path,
                                               mlflow_uri: str) -> None:
    """2 LRs x 2 ranks of tiny-apertus on the local backend; MLflow ends with 4 finished
    runs; the same conf again submits nothing."""
    from mlflow.tracking import MlflowClient

    conf = {"sweep": "tiny", "max_steps": 2, "evaluate": False}
    specs = plan_runs(parse_conf(conf))
    assert len(specs) == 4
    dag = load_dag()
    first = dag.test(run_conf=conf)
    assert first.state == "success", states(first)
    assert states(first)["train"] == ["success"] * 4

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(specs[0].experiment)
    runs = client.search_runs([experiment.experiment_id])
    finished = {r.data.tags["spec_hash"] for r in runs if r.data.tags.get("outcome") == "finished"}
    assert finished == {s.spec_hash for s in specs}
    assert {r.data.tags["sweep_id"] for r in runs} == {parse_conf(conf).derived_sweep_id()}
    assert all(r.data.tags.get("job_id") for r in runs)
    jobs = job_folders(sweep_env)
    assert len(jobs) == 4

    second = dag.test(run_conf=conf)
    assert second.state == "success", states(second)
    assert states(second)["train"] == ["skipped"]
    assert job_folders(sweep_env) == jobs
    assert len(client.search_runs([experiment.experiment_id])) == 4

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).all()
        extras = [e.extra for e in events if e.source_run_id in {first.run_id, second.run_id}]
    sweep_id = parse_conf(conf).derived_sweep_id()
    assert {"sweep_id": sweep_id,
            "runs": {"finished": 4, "diverged": 0, "oom": 0, "failed": 0}} in extras
    assert {"sweep_id": sweep_id,  # nothing new to train: still an event, zero counts
            "runs": {"finished": 0, "diverged": 0, "oom": 0, "failed": 0}} in extras
    shutil.rmtree(sweep_env / "runs", ignore_errors=True)


@pytest.mark.airflow
@pytest.mark.slow
def test_one_run_is_trained_then_evaluated_on_lexam(airflow_db: Path, sweep_env: Path,
                                                    mlflow_uri: str) -> None:
    """train -> evaluate (python -m evaluation sweep, as a job) -> lexam/* in the run."""
    from mlflow.tracking import MlflowClient

    conf = {"sweep": "tiny", "learning_rates": [1e-3], "ranks": [2], "max_steps": 2,
            "eval_data": "synthetic", "eval_max_questions": 2}
    run = load_dag().test(run_conf=conf)
    assert run.state == "success", states(run)
    assert states(run)["evaluate"] == ["success"]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("lora-regret")
    trained = [r for r in client.search_runs([experiment.experiment_id])
               if r.data.tags.get("method") == "lora"]
    assert len(trained) == 1
    assert trained[0].data.metrics["lexam/n_questions"] == 2
