"""Nightly re-evaluation: which versions it picks, what it skips, and the real DAG run
(``dag.test()``) against registered tiny-apertus adapters in a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from evaluation.nightly import NightlyConf, evaluation_command, parse_conf, plan_versions
from training.job import run_training
from training.spec import RunSpec

FAST = {"model": "tiny-apertus", "max_steps": 2, "per_device_batch": 2, "grad_accum": 1,
        "max_seq_length": 256, "data": {"source": "synthetic", "synthetic_size": 8},
        "bf16": "off", "save_steps": 100, "sweep_id": "nightly"}
CONF = {"data": "synthetic", "max_questions": 3, "max_new_tokens": 4, "dtype": "float32"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def registered(mlflow_uri: str, tmp_path: Path) -> tuple[str, str]:
    """Two registered LoRA versions; an alias on the older one."""
    first = run_training(RunSpec(**FAST, method="lora", rank=2, lr=1e-3,
                                 output_dir=str(tmp_path / "runs")))
    second = run_training(RunSpec(**FAST, method="lora", rank=2, lr=1e-2,
                                  output_dir=str(tmp_path / "runs")))
    assert str(first.registered_version) == "1" and str(second.registered_version) == "2"
    MlflowClient().set_registered_model_alias("lora-regret-tiny-apertus-lora", "champion", "1")
    return first.run_id, second.run_id


def test_conf_is_validated_and_names_the_field() -> None:
    with pytest.raises(ValueError, match="data"):
        parse_conf({"data": "x; rm -rf /"})
    with pytest.raises(ValueError, match="choices"):
        parse_conf({"choices": 5})
    with pytest.raises(ValueError, match="languages"):
        parse_conf({"languages": "de,$(id)"})
    conf = parse_conf({"languages": "de,en", "max_questions": None, "force": True})
    assert conf.languages == ("de", "en") and conf.force and conf.max_questions is None


def test_evaluation_command_is_an_argument_list() -> None:
    from evaluation.nightly import VersionTask

    task = VersionTask(name="lora-regret-apertus-8b-lora", version="3", model="apertus-8b",
                       method="lora", run_id="abc")
    cmd = evaluation_command(task, NightlyConf(data="synthetic", languages=("de",)), "/o.json")
    assert cmd[1:3] == ["-m", "evaluation"]
    assert cmd[cmd.index("--adapter") + 1] == "models:/lora-regret-apertus-8b-lora/3"
    assert cmd[cmd.index("--run-id") + 1] == "abc"
    assert cmd[cmd.index("--languages") + 1] == "de"
    full = task.model_copy(update={"method": "full", "checkpoint_path": "/ckpt/final"})
    assert evaluation_command(full, NightlyConf(data="synthetic"), "/o")[4] == "/ckpt/final"


@pytest.mark.airflow
def test_plan_takes_latest_and_aliased_and_skips_evaluated(registered, airflow_db) -> None:
    first_run, second_run = registered
    conf = parse_conf(CONF)
    eval_hash, tasks = plan_versions(conf)
    assert [(t.version, t.aliases, t.run_id) for t in tasks] == [
        ("1", ["champion"], first_run), ("2", [], second_run)]

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "lexam_nightly.py"))
    assert not bag.import_errors
    dag = bag.get_dag("lexam_nightly")
    assert dag is not None
    run = dag.test(run_conf=CONF)
    assert run.state == "success"

    client = MlflowClient()
    for run_id in (first_run, second_run):
        data = client.get_run(run_id).data
        assert data.tags["lexam_eval_hash"] == eval_hash
        assert data.metrics["lexam/n_questions"] == 3
        assert "lexam/loglik_accuracy" in data.metrics
    version = client.get_model_version("lora-regret-tiny-apertus-lora", "2")
    assert version.tags["lexam_eval_hash"] == eval_hash

    # Evaluated on this set: nothing left tonight, unless forced or the set changes.
    assert plan_versions(conf)[1] == []
    assert len(plan_versions(parse_conf({**CONF, "force": True}))[1]) == 2
    assert len(plan_versions(parse_conf({**CONF, "max_questions": 4}))[1]) == 2
    rerun = dag.test(run_conf=CONF)  # nothing to map: still a successful run
    assert rerun.state == "success"
