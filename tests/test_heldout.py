"""Held-out SJP cases: the split, its record, the metrics and the recommendation rule.

No model: the split and the metrics are checked on real files (the shared SJP sample when
present, hand-made JSONL otherwise) and on hand-made prediction tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from contracts.conf import parse_conf, plan_runs
from contracts.errors import SpecError
from contracts.plan import plan_sweep
from contracts.profiles import load_profile
from contracts.spec import DataSpec, RunSpec, parse_spec
from evaluation.bootstrap import paired_difference
from evaluation.sjp_metrics import CasePrediction, f1_scores, macro_f1, sjp_metrics
from reporting.heldout import loss_order, pareto_flags, recommend, with_metric
from training.data import DataError
from training.split import case_key, heldout_cases, split_cases


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _cases(n: int, approvals: int, prefix: str = "c") -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"Facts of case {prefix}{i}.",
             "label": int(i < approvals), "language": "de"} for i in range(n)]


# -- the split ---------------------------------------------------------------------------


def test_stratified_split_is_disjoint_reproducible_and_the_same_for_every_seed(
        tmp_path: Path) -> None:
    source = _write(tmp_path / "cases.jsonl", _cases(60, approvals=15))  # 25% approvals
    data = DataSpec(source=str(source), heldout_fraction=0.2)
    first, again, other_seed = split_cases(data, seed=0), split_cases(data, seed=0), \
        split_cases(data, seed=7)
    record = first.record
    assert record.method == "stratified"
    assert set(record.train_ids).isdisjoint(record.heldout_ids)
    assert len(record.train_ids) + len(record.heldout_ids) == 60
    # Stratified: 20% of each outcome (3 of 15 approvals, 9 of 45 dismissals).
    assert record.heldout_labels == {"0": 9, "1": 3} and record.train_labels == {"0": 36, "1": 12}
    assert record.majority_label == 0
    assert again.record == record  # reproducible
    assert other_seed.record.heldout_ids == record.heldout_ids  # the run's seed is not used
    assert split_cases(data.model_copy(update={"split_seed": 1})).record.heldout_ids != \
        record.heldout_ids
    # The file's row order does not change the split.
    shuffled = _write(tmp_path / "shuffled.jsonl", list(reversed(_cases(60, approvals=15))))
    assert set(split_cases(DataSpec(source=str(shuffled), heldout_fraction=0.2)).record
               .heldout_ids) == set(record.heldout_ids)
    # max_samples subsamples the training side only, with the run's seed.
    small = data.model_copy(update={"max_samples": 10})
    a, b = split_cases(small, seed=1).record, split_cases(small, seed=2).record
    assert a.n_train == b.n_train == 10 and a.train_ids != b.train_ids
    assert a.heldout_ids == b.heldout_ids == record.heldout_ids


def test_copies_of_the_same_facts_never_straddle_the_split(tmp_path: Path) -> None:
    rows = _cases(40, approvals=20)
    copies = [{**row, "id": f"copy-{row['id']}"} for row in rows[:20]]  # same facts, new id
    source = _write(tmp_path / "cases.jsonl", rows + copies)
    record = split_cases(DataSpec(source=str(source), heldout_fraction=0.25)).record
    train_texts = {r["text"] for r in rows + copies if case_key(r) in set(record.train_ids)}
    held_texts = [r["text"] for r in rows + copies if case_key(r) in set(record.heldout_ids)]
    assert train_texts.isdisjoint(held_texts)
    assert len(held_texts) == len(set(held_texts))  # scored once, not twice
    assert record.dropped_overlap > 0


def test_the_shared_sample_split(shared_data: Path) -> None:
    """The real 103 cases hold 16 texts twice under different ids: the split keeps each
    pair on one side and scores it once."""
    data = DataSpec(source=str(shared_data / "sjp_sample" / "cases.jsonl"), heldout_fraction=0.2)
    split = split_cases(data)
    record = split.record
    assert set(record.train_ids).isdisjoint(record.heldout_ids)
    train_texts = {" ".join(r["text"].split()) for r in split.train}
    assert all(" ".join(r["text"].split()) not in train_texts for r in split.heldout)
    assert 12 <= record.n_heldout <= 21 and set(record.heldout_labels) == {"0", "1"}


def test_hub_heldout_split_drops_cases_also_in_training(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    train = _cases(20, approvals=8, prefix="t")
    _write(hub / "train.jsonl", train)
    _write(hub / "validation.jsonl", [*_cases(10, approvals=4, prefix="v"), train[0]])
    data = DataSpec(source=f"hub:{hub}", heldout_split="validation")
    record = split_cases(data).record
    assert record.method == "hub_splits" and record.n_train == 20
    assert record.n_heldout == 10 and record.dropped_overlap == 1
    assert "t0" not in record.heldout_ids


def test_heldout_cases_are_checked_against_the_record(tmp_path: Path) -> None:
    source = _write(tmp_path / "cases.jsonl", _cases(30, approvals=10))
    record = split_cases(DataSpec(source=str(source), heldout_fraction=0.3)).record
    rows = heldout_cases(record)
    assert [case_key(r) for r in rows] == record.heldout_ids
    assert len(heldout_cases(record, max_cases=4)) == 4
    # A record claiming a training case as held out is refused, as is changed data.
    tampered = record.model_copy(update={"heldout_ids": [*record.heldout_ids[:-1],
                                                          record.train_ids[0]]})
    with pytest.raises(DataError, match="no longer match"):
        heldout_cases(tampered)
    _write(source, _cases(30, approvals=10, prefix="other"))
    with pytest.raises(DataError, match="no longer match"):
        heldout_cases(record)
    no_split = split_cases(DataSpec(source=str(source))).record
    with pytest.raises(DataError, match="held no cases out"):
        heldout_cases(no_split)


def test_too_few_cases_to_hold_out_is_a_clear_error(tmp_path: Path) -> None:
    source = _write(tmp_path / "one.jsonl", _cases(1, approvals=0))
    with pytest.raises(DataError, match="heldout_fraction"):
        split_cases(DataSpec(source=str(source), heldout_fraction=0.5))


def test_split_settings_in_the_spec() -> None:
    base = {"model": "tiny-apertus", "method": "lora", "rank": 8, "lr": 1e-3}
    plain = RunSpec(**base)
    # Unset, the new fields leave the identity (and every existing hash) as it was.
    assert "heldout_fraction" not in plain.identity()["data"]
    assert "split_seed" not in plain.identity()["data"]
    assert RunSpec(**base, data={"split_seed": 3}).spec_hash == plain.spec_hash
    held = RunSpec(**base, data={"heldout_fraction": 0.1})
    assert held.spec_hash != plain.spec_hash
    assert RunSpec(**base, data={"heldout_fraction": 0.1, "split_seed": 1}).spec_hash != \
        held.spec_hash
    # Which checkpoints are kept does not change what is trained.
    assert RunSpec(**base, checkpoint_eval_every=2, eval_max_cases=9).spec_hash == plain.spec_hash
    for bad, field in [({"heldout_split": "validation"}, "heldout_split"),
                       ({"source": "hub:x/y", "heldout_split": "validation",
                         "heldout_fraction": 0.1}, "heldout_fraction"),
                       ({"source": "hub:x/y", "heldout_split": "train"}, "heldout_split"),
                       ({"heldout_fraction": 1.0}, "heldout_fraction")]:
        with pytest.raises(SpecError, match=field):
            parse_spec({**base, "data": bad})


def test_sweep_conf_sets_the_split_and_the_checkpoints() -> None:
    tiny = plan_runs(parse_conf({"sweep": "tiny"}))
    assert {s.data.heldout_fraction for s in tiny} == {0.25}
    assert {s.checkpoint_eval_every for s in tiny} == {1}
    none = plan_runs(parse_conf({"sweep": "tiny", "heldout_fraction": 0, "checkpoint_every": 0}))
    assert {(s.data.holds_out, s.checkpoint_eval_every) for s in none} == {(False, 0)}
    # The reference grid scores the hub's own validation split; a local copy gets a split.
    reference = plan_runs(parse_conf({}))
    assert {s.data.heldout_split for s in reference} == {"validation"}
    local = plan_runs(parse_conf({"data_source": "../shared/data/sjp_sample/cases.jsonl"}))
    assert {(s.data.heldout_split, s.data.heldout_fraction) for s in local} == {(None, 0.1)}
    # Full fine-tunes keep checkpoints (whole models) only when asked.
    assert {s.checkpoint_eval_every for s in reference if s.method == "full"} == {0}
    asked = plan_runs(parse_conf({"full_checkpoints": True}))
    assert {s.checkpoint_eval_every for s in asked if s.method == "full"} == {2}
    # The evaluation jobs evaluate the kept checkpoints and cap the held-out cases.
    plan = plan_sweep(parse_conf({"sweep": "tiny", "sjp_eval_cases": 50}), load_profile("local"),
                      lambda specs: set())
    assert [(e.spec.checkpoints, e.spec.sjp, e.spec.sjp_max_cases) for e in plan.evaluate] == \
        [(True, True, 50)]
    with pytest.raises(SpecError, match="heldout_fraction"):
        parse_conf({"heldout_fraction": 1.5})


# -- metrics -------------------------------------------------------------------------------


def _table(gold: list[int], predicted: list[int]) -> list[CasePrediction]:
    return [CasePrediction(case_id=str(i), gold=g, logp_dismissal=-1.0 if p == 0 else -2.0,
                           logp_approval=-1.0 if p == 1 else -2.0, gold_tokens=2)
            for i, (g, p) in enumerate(zip(gold, predicted, strict=True))]


def test_macro_f1_and_the_majority_baseline_on_a_hand_made_table() -> None:
    # 10 cases, 7 dismissals (0) and 3 approvals (1).
    gold = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    predicted = [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    # dismissal: tp 5, fp 1, fn 2 -> F1 10/13; approval: tp 2, fp 2, fn 1 -> F1 4/7.
    assert f1_scores(gold, predicted) == pytest.approx({0: 10 / 13, 1: 4 / 7})
    metrics = sjp_metrics(_table(gold, predicted), majority_label=0)
    assert metrics["sjp/accuracy"] == pytest.approx(0.7)
    assert metrics["sjp/macro_f1"] == pytest.approx((10 / 13 + 4 / 7) / 2)
    # Always "dismissal": accuracy 70%, but macro-F1 only (14/17 + 0) / 2.
    assert metrics["sjp/majority_accuracy"] == pytest.approx(0.7)
    assert metrics["sjp/majority_macro_f1"] == pytest.approx((14 / 17) / 2)
    assert metrics["sjp/predicted_approval_rate"] == pytest.approx(0.4)
    assert metrics["sjp/n_cases"] == 10
    # Loss: per token of the true word; right ones -1.0, wrong ones -2.0 over 2 tokens.
    assert metrics["sjp/loss"] == pytest.approx((7 * 0.5 + 3 * 1.0) / 10)
    assert macro_f1([1, 1], [0, 0]) == 0.0  # nothing right: 0, not a division error


def test_the_prediction_is_the_likelier_outcome_word() -> None:
    case = CasePrediction(case_id="x", gold=1, logp_dismissal=-3.2, logp_approval=-0.4)
    assert case.predicted == 1 and case.gold_logp == -0.4
    assert CasePrediction(case_id="y", gold=1, logp_dismissal=-0.1,
                          logp_approval=-0.4).predicted == 0


def test_paired_bootstrap_of_the_difference_to_the_base_model() -> None:
    questions = [f"q{i}" for i in range(200)]
    base = {q: i % 2 == 0 for i, q in enumerate(questions)}  # 50%
    assert paired_difference(base, base)[:3] == (0.0, 0.0, 0.0)
    worse = {q: right and i % 4 != 0 for i, (q, right) in enumerate(base.items())}  # 25%
    delta, low, high, n = paired_difference(base, worse)
    assert n == 200 and delta == pytest.approx(-0.25) and low < delta < high < 0
    noisy = {q: (i % 3 == 0) for i, q in enumerate(questions)}  # 33.5%, unpaired pattern
    delta, low, high, _ = paired_difference(base, noisy)
    assert low < delta < high
    assert paired_difference({"a": True}, {"b": True}) is None


# -- the report's rules --------------------------------------------------------------------


def test_pareto_front_on_both_axes() -> None:
    points = [(-0.20, 0.70), (-0.01, 0.60), (0.0, 0.50), (-0.05, 0.55), (-0.20, 0.65)]
    assert pareto_flags(points) == [True, True, True, False, False]


def _configs(rows: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(configs, steps) for hand-made recipes: (method, rank, lr, step, acc, f1, seeds)."""
    configs, steps = [], []
    for i, (method, rank, lr, step, acc, f1, seeds) in enumerate(rows):
        ids = [f"run{i}-s{s}" for s in range(seeds)]
        configs.append({"model": "m", "method": method, "rank": rank, "lr": lr, "step": step,
                        "lexam_accuracy": acc, "lexam_accuracy_std": None, "accuracy_delta": None,
                        "sjp_macro_f1": f1, "sjp_macro_f1_std": 0.01 if seeds > 1 else math.nan,
                        "sjp_accuracy": f1, "eval_loss": None, "final_loss": 0.7,
                        "final": step == 467, "n_seeds": seeds, "run_ids": ids})
        steps += [{"run_id": r, "step": step, "sjp/macro_f1": f1} for r in ids]
    return pd.DataFrame(configs), pd.DataFrame(steps)


def test_recommendation_is_the_best_macro_f1_within_the_margin() -> None:
    configs, steps = _configs([
        ("lora", 64, 1e-3, 467, 0.02, 0.70, 1),   # best task skill, forgot LEXam
        ("lora", 64, 1e-4, 100, 0.255, 0.66, 1),  # early checkpoint within 2 points
        ("lora", 8, 1e-5, 467, 0.27, 0.60, 1),
        ("full", None, 1e-5, 467, 0.26, 0.64, 1),
    ])
    r = recommend(configs, steps, base=0.271, margin=0.02)
    assert (r.best.method, r.best.rank, r.best.lr, r.best.step, r.best.final) == \
        ("lora", 64, 1e-4, 100, False)
    assert (r.runner_up.method, r.runner_up.lr) == ("full", 1e-5)
    assert r.n_candidates == 4 and r.n_within_margin == 3 and r.single_seed
    assert r.within_noise_of_runner_up is None  # single seed: not testable
    strict = recommend(configs, steps, base=0.271, margin=0.0)
    assert strict.best is None and "within 0 points" in strict.reason
    assert recommend(configs, steps, base=None).best is None


def test_loss_order_is_a_rank_correlation_across_runs() -> None:
    steps = pd.DataFrame({
        "run_id": list("abcd"), "run_name": list("abcd"), "final": True,
        "final_loss": [0.6, 0.7, 0.8, 0.9], "sjp/macro_f1": [0.70, 0.65, 0.60, 0.55]})
    agree = loss_order(steps)
    assert agree.spearman == pytest.approx(-1.0) and agree.agrees and agree.pair_agreement == 1
    steps["sjp/macro_f1"] = [0.55, 0.70, 0.65, 0.60]
    mixed = loss_order(steps)
    assert mixed.spearman == pytest.approx(0.2) and mixed.agrees is False
    assert (mixed.lowest_loss_run, mixed.best_macro_f1_run) == ("a", "b")
    assert loss_order(steps.iloc[:2]).spearman is None  # too few runs


def test_retention_metric_columns() -> None:
    frame = pd.DataFrame({f"lexam/{m}{s}": [0.1] for m in ("accuracy", "loglik_accuracy")
                          for s in ("", "_delta", "_delta_low", "_delta_high")})
    frame["lexam/loglik_accuracy"] = 0.4
    assert with_metric(frame, "loglik_accuracy")["acc"].tolist() == [0.4]
    assert with_metric(frame, "accuracy")["acc"].tolist() == [0.1]
