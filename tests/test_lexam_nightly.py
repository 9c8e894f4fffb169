"""Nightly re-evaluation: its conf, which versions it picks, the jobs it plans, and the real
DAG run (``dag.test()``) whose evaluation jobs run on the local backend against registered
tiny-apertus adapters in a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from contracts.conf import parse_nightly_conf
from contracts.errors import SpecError
from contracts.evaluation import EvalJobSpec
from contracts.plan import EVAL_SPEC_FILE, plan_nightly
from contracts.profiles import load_profile
from contracts.spec import RunSpec
from tracking.versions import versions_to_evaluate
from training.job import run_training

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
    for conf, field in [({"data": "x; rm -rf /"}, "data"), ({"choices": 5}, "choices"),
                        ({"languages": "de,$(id)"}, "languages"), ({"force": "yes"}, "force"),
                        ({"max_questions": True}, "max_questions"), ({"typo": 1}, "typo")]:
        with pytest.raises(SpecError, match=field):
            parse_nightly_conf(conf)
    conf = parse_nightly_conf({"languages": "de,en", "max_questions": None, "force": True})
    assert conf.languages == ("de", "en") and conf.force and conf.max_questions is None


def test_plan_is_one_spec_file_job_per_base_model() -> None:
    conf = parse_nightly_conf(CONF)
    jobs = plan_nightly(conf, load_profile("local"), [
        ("tiny-apertus", "a1"), ("apertus-8b", "b1"), ("tiny-apertus", "a2"),
        ("tiny-apertus", "a1"), ("gone-model", "c1")])
    assert [job.spec.model for job in jobs] == ["apertus-8b", "tiny-apertus"]
    tiny = jobs[1]
    assert tiny.spec.run_ids == ("a1", "a2") and not tiny.spec.baseline
    assert tiny.spec.skip_evaluated  # not forced
    written = EvalJobSpec.model_validate(yaml.safe_load(tiny.job.files[EVAL_SPEC_FILE]))
    assert written == tiny.spec
    assert tiny.job.argv[1:4] == ("-m", "evaluation", "--spec")
    forced = plan_nightly(parse_nightly_conf({**CONF, "force": True}), load_profile("local"),
                          [("tiny-apertus", "a1")])
    assert not forced[0].spec.skip_evaluated


@pytest.fixture
def nightly_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `local` profile whose job folders are private to the test."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    local = yaml.safe_load((REPO / "configs" / "clusters" / "local.yaml").read_text())
    local.update(work_dir=str(tmp_path / "jobs"), poll_interval=0.5)
    (clusters / "local.yaml").write_text(yaml.safe_dump(local))
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))
    return tmp_path


@pytest.mark.airflow
@pytest.mark.slow
def test_latest_and_aliased_versions_are_evaluated_as_jobs(registered, airflow_db,
                                                           nightly_env: Path) -> None:
    first_run, second_run = registered
    versions = versions_to_evaluate()
    assert [(v.version, v.aliases, v.run_id) for v in versions] == [
        ("1", ("champion",), first_run), ("2", (), second_run)]

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "lexam_nightly.py"))
    assert not bag.import_errors
    dag = bag.get_dag("lexam_nightly")
    run = dag.test(run_conf=CONF)
    assert run.state == "success"
    logs = sorted((nightly_env / "jobs").glob("lr-nightly-tiny-apertus-*/job.log"))
    assert len(logs) == 1  # one job for the base model, both versions in it

    client = MlflowClient()
    hashes = set()
    for run_id in (first_run, second_run):
        data = client.get_run(run_id).data
        hashes.add(data.tags["lexam_eval_hash"])
        assert data.metrics["lexam/n_questions"] == 3
        assert "lexam/loglik_accuracy" in data.metrics
    (eval_hash,) = hashes
    version = client.get_model_version("lora-regret-tiny-apertus-lora", "2")
    assert version.tags["lexam_eval_hash"] == eval_hash

    # Evaluated on this set: tonight's second run skips both versions.
    assert dag.test(run_conf=CONF).state == "success"
    logs = sorted((nightly_env / "jobs").glob("lr-nightly-tiny-apertus-*/job.log"),
                  key=lambda p: p.stat().st_mtime)
    assert len(logs) == 2 and "already evaluated" in logs[-1].read_text()

    from airflow.sdk.exceptions import ParamValidationError

    try:
        bad = dag.test(run_conf={**CONF, "data": "$(reboot)"})
    except ParamValidationError:
        bad = None  # the form refused it before a run existed
    assert bad is None or bad.state == "failed"
    assert len(list((nightly_env / "jobs").glob("lr-nightly-*"))) == 2  # nothing submitted
