"""Reporting's pure parts on hand-made runs: seeds and noise, edge cases, trigger ids,
labels. (End to end on a real MLflow store: test_reporting.py.)"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from reporting.analysis import analyse
from reporting.config import ReportConfig
from reporting.fetch import SweepData, runs_table
from reporting.figures import draw_all
from reporting.history import empty_history
from reporting.labels import lr_label, model_label
from reporting.triggers import sweep_ids_to_report

_ids = itertools.count()


def make_run(method: str, lr: float, loss: float | None, *, rank: int | None = None,
             seed: int = 0, model: str = "apertus-8b", outcome: str = "finished",
             metrics: dict[str, float] | None = None) -> Run:
    run_id = f"run{next(_ids):04d}"
    tags = {"sweep_id": "unit", "model": model, "method": method, "lr": f"{lr:g}",
            "rank": "" if rank is None else str(rank), "seed": str(seed), "outcome": outcome}
    values = dict(metrics or {})
    if loss is not None:
        values["train/final_loss"] = loss
    data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in values.items()],
                   tags=[RunTag(k, v) for k, v in tags.items()])
    info = RunInfo(run_id, "1", "test", "FINISHED", 0, 1, "active", run_name=run_id)
    return Run(info, data)


def sweep_data(runs: list[Run], baselines: list[Run] | None = None,
               history: pd.DataFrame | None = None) -> SweepData:
    return SweepData("unit", runs_table(runs), runs_table(baselines or []),
                     empty_history() if history is None else history, "1")


def seeded(method: str, lr: float, mean: float, spread: float, rank: int | None = None,
           seeds: int = 3) -> list[Run]:
    offsets = np.linspace(-spread, spread, seeds)
    return [make_run(method, lr, mean + o, rank=rank, seed=s) for s, o in enumerate(offsets)]


def test_seeds_give_means_with_spread_and_a_noise_verdict() -> None:
    runs = (seeded("lora", 1e-3, 0.700, 0.010, rank=16) + seeded("lora", 1e-4, 0.705, 0.010,
                                                                 rank=16)
            + seeded("full", 1e-4, 0.600, 0.002) + seeded("full", 1e-5, 0.650, 0.002))
    findings, _ = analyse(sweep_data(runs))
    m = findings.models[0]
    assert m.max_seeds == 3
    assert m.lora_best.n_seeds == 3 and m.lora_best.std == pytest.approx(0.010)
    assert m.lora_best.final_loss == pytest.approx(0.700)
    # 0.700 vs 0.705 with a std of 0.01 over 3 seeds: within noise. Full FT: clear.
    assert m.lora_best.within_noise_of_runner_up is True
    assert m.full_best.within_noise_of_runner_up is False
    assert m.gap.within_noise is False
    texts = " ".join(s.text for s in findings.statements)
    assert "within seed noise" in texts and "± 0.010 over 3 seeds" in texts
    assert "Up to 3 seeds" in texts


def test_a_rank_whose_best_lr_differs_within_noise_still_counts_as_consistent() -> None:
    runs = (seeded("lora", 1e-3, 0.70, 0.01, rank=8) + seeded("lora", 1e-4, 0.75, 0.01, rank=8)
            + seeded("lora", 1e-3, 0.703, 0.01, rank=64)
            + seeded("lora", 1e-4, 0.701, 0.01, rank=64)
            + seeded("lora", 1e-3, 0.69, 0.01, rank=128)
            + seeded("lora", 1e-4, 0.74, 0.01, rank=128))
    ri = analyse(sweep_data(runs))[0].models[0].rank_independence
    per_rank = {r.rank: r for r in ri.per_rank}
    assert per_rank[64].best_lr == 1e-4 and per_rank[64].consistent_with_common_lr
    assert ri.common_lr == 1e-3 and ri.rank_independent is True


def test_rank_dependent_best_lr_is_reported() -> None:
    runs = [make_run("lora", 1e-3, 0.70, rank=8), make_run("lora", 1e-4, 0.75, rank=8),
            make_run("lora", 1e-3, 0.80, rank=256), make_run("lora", 1e-4, 0.72, rank=256)]
    findings, _ = analyse(sweep_data(runs))
    ri = findings.models[0].rank_independence
    assert ri.rank_independent is False and ri.ranks_at_common_lr == 1
    assert any("rank-dependent" in s.text and "rank 256: 1e-4" in s.text
               for s in findings.statements)
    assert findings.models[0].full_best is None and findings.models[0].gap is None


def test_running_and_non_finite_runs_are_kept_out() -> None:
    runs = [make_run("full", 1e-4, 0.60), make_run("full", 1e-5, 0.10, outcome="running"),
            make_run("full", 1e-3, float("nan")), make_run("lora", 1e-3, 0.7, rank=None)]
    findings, _ = analyse(sweep_data(runs))
    m = findings.models[0]
    assert m.full_best.lr == 1e-4 and m.n_usable == 1 and len(m.excluded) == 3
    assert {e.reason for e in m.excluded} == {"outcome running", "no finite final loss",
                                              "LoRA run without a rank tag"}


def test_figures_and_report_survive_a_sweep_without_lexam_or_history(tmp_path: Path) -> None:
    from reporting.report import write_report

    runs = [make_run("lora", 1e-3, 0.7, rank=4), make_run("full", 1e-4, 0.6)]
    findings, table = analyse(sweep_data(runs))
    figures = draw_all(table, empty_history(), findings, tmp_path)
    assert "tradeoff" not in figures and "lr_sweep" in figures
    paths = write_report(findings, figures, tmp_path)
    assert "No LEXam metrics logged" in paths["markdown"].read_text()


def test_markdown_from_mlflow_cannot_inject_html(tmp_path: Path) -> None:
    from reporting.report import write_report

    evil = make_run("lora", 1e-2, 0.1, rank=4, outcome="failed")
    evil.info._run_name = "<script>alert(1)</script>|x"
    findings, table = analyse(sweep_data([evil, make_run("full", 1e-4, 0.6)]))
    page = write_report(findings, {}, tmp_path)["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_sweep_ids_from_param_or_asset_events() -> None:
    assert sweep_ids_to_report("ref-1", [{"sweep_id": "other"}]) == ["ref-1"]
    assert sweep_ids_to_report(None, [{"sweep_id": "a"}, {}, {"sweep_id": "b"},
                                      {"sweep_id": "a"}]) == ["a", "b"]
    assert sweep_ids_to_report("", []) == []
    for bad in ("x; rm -rf /", "$(id)", "../etc", "a b", "-rf"):
        with pytest.raises(ValueError, match="sweep_id"):
            sweep_ids_to_report(bad, [])
        with pytest.raises(ValueError, match="sweep_id"):
            sweep_ids_to_report(None, [{"sweep_id": bad}])


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="sweep_id"):
        ReportConfig(sweep_ids=("ok", "not ok"))
    with pytest.raises(ValueError, match="final_loss_window"):
        ReportConfig(final_loss_window=0)


def test_labels() -> None:
    assert [lr_label(x) for x in (1e-3, 1e-4, 3.5e-4, 2e-5)] == ["1e-3", "1e-4", "3.5e-4",
                                                                  "2e-5"]
    assert model_label("apertus-70b") == "Apertus 70B" and model_label("tiny") == "tiny"


def test_reporting_imports_neither_torch_nor_airflow() -> None:
    import subprocess
    import sys

    code = ("import sys, reporting.pipeline, reporting.cli, reporting.triggers\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'airflow', 'training', 'transformers'})\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
