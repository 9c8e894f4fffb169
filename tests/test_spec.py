"""The run spec and sweep grids: validation names the field, the hash is the identity."""

from __future__ import annotations

import re

import pytest

from contracts.spec import RunSpec, SpecError, parse_spec
from contracts.sweep import load_named_sweep, parse_sweep

BASE = {"model": "tiny-apertus", "method": "lora", "lr": 1e-3, "rank": 8}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": 0}, "lr"),
        ({"lr": -1e-4}, "lr"),
        ({"rank": 3}, "rank"),
        ({"rank": 0}, "rank"),
        ({"rank": None}, "rank"),
        ({"method": "full"}, "rank"),  # rank given for full fine-tuning
        ({"model": "gpt-17"}, "model"),
        ({"method": "qlora"}, "method"),
        ({"dropout": 1.5}, "dropout"),
        ({"zero_stage": 1}, "zero_stage"),
        ({"output_dir": "runs; rm -rf /"}, "output_dir"),
        ({"sweep_id": "$(id)"}, "sweep_id"),
        ({"data": {"source": "a b"}}, "data.source"),
        ({"target_modules": ["q_proj", "x;y"]}, "target_modules"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_specs_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec({**BASE, **change})
    assert re.search(rf"(^|\n|: ){re.escape(field)}[.:]", str(error.value)), str(error.value)


def test_hash_ignores_bookkeeping_but_not_training_fields() -> None:
    spec = RunSpec(**BASE)
    assert spec.spec_hash == RunSpec(**BASE, output_dir="elsewhere", sweep_id="s2").spec_hash
    assert spec.spec_hash != RunSpec(**{**BASE, "lr": 1e-4}).spec_hash
    assert spec.spec_hash != RunSpec(**BASE, seed=1).spec_hash
    assert len(spec.spec_hash) == 16


def test_hash_is_stable_across_processes() -> None:
    # A changed hash would make every finished run look new to the sweep DAG.
    assert RunSpec(**BASE).spec_hash == "e48105dd43b8ec93"


def test_spec_round_trips_through_yaml(tmp_path) -> None:
    spec = RunSpec(**BASE, data={"source": "synthetic", "languages": ["de", "fr"]})
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert RunSpec.from_file(path) == spec


def test_reference_grid_has_52_runs_and_full_ft_has_no_rank() -> None:
    specs = load_named_sweep("reference").expand()
    assert len(specs) == 52
    assert sum(s.method == "lora" for s in specs) == 46
    assert all(s.rank is None for s in specs if s.method == "full")
    assert {s.model for s in specs} == {"apertus-8b", "apertus-70b"}
    assert len({s.spec_hash for s in specs}) == 52


def test_sweep_refuses_a_bad_run_before_returning_any() -> None:
    sweep = parse_sweep({"name": "s", "grids": [
        {"models": ["tiny-apertus"], "methods": ["lora"], "learning_rates": [1e-3],
         "ranks": [4, 6]}]})
    with pytest.raises(SpecError, match="rank"):
        sweep.expand()


def test_sweep_needs_ranks_for_lora() -> None:
    with pytest.raises(SpecError, match="ranks"):
        parse_sweep({"name": "s", "grids": [
            {"models": ["tiny-apertus"], "methods": ["lora"], "learning_rates": [1e-3]}]})


def test_the_trigger_forms_are_generated_from_the_conf_models() -> None:
    """A field added to a conf model appears in the form with its title, description,
    default and bounds; the DAG files add nothing of their own."""
    from pydantic import Field

    from contracts.conf import NightlyConf, ReportConf, SweepConf
    from contracts.forms import form_fields

    class WithWarmup(SweepConf):
        warmup_steps: int | None = Field(default=None, ge=0, le=1000, title="Warmup steps",
                                         description="Steps of linear warmup.")

    before, after = form_fields(SweepConf), form_fields(WithWarmup)
    assert set(after) - set(before) == {"warmup_steps"}
    assert after["warmup_steps"] == {
        "default": None, "type": ["null", "integer"], "minimum": 0, "maximum": 1000,
        "title": "Warmup steps", "description": "Steps of linear warmup."}
    # Every form field is a conf field and vice versa, for all three DAGs' confs.
    for model in (SweepConf, NightlyConf, ReportConf):
        assert set(form_fields(model)) == set(model.model_fields)
    assert form_fields(SweepConf)["learning_rates"]["items"] == {
        "type": "number", "exclusiveMinimum": 0, "maximum": 1.0}
    assert form_fields(SweepConf)["data_source"]["pattern"].startswith("^[A-Za-z0-9_./")


@pytest.mark.airflow
def test_the_dags_params_are_exactly_the_generated_forms(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from contracts.conf import NightlyConf, ReportConf, SweepConf
    from contracts.forms import form_fields

    bag = DagBag()
    for dag_id, model in (("lora_regret_sweep", SweepConf), ("lexam_nightly", NightlyConf),
                          ("lora_regret_report", ReportConf)):
        params = bag.get_dag(dag_id).params
        expected = form_fields(model)
        assert set(params) == set(expected), dag_id
        for name, field in expected.items():
            param = params.get_param(name)
            schema = {k: v for k, v in field.items() if k not in ("default", "description")}
            assert param.schema == schema, (dag_id, name)
            assert param.description == field.get("description"), (dag_id, name)
            assert params[name] == field["default"], (dag_id, name)
