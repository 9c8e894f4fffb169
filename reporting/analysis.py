"""The research questions answered from a sweep's tidy tables (pure pandas, no I/O).

Definitions, stated once here and in findings.json:

- Final loss of a run: its logged ``train/final_loss`` (the training job's mean of the
  last ``final_loss_window`` logged losses, 10 by default); for a run that logged none,
  the same mean recomputed from its ``train/loss`` history.
- Runs that are not ``finished`` (diverged, failed, running) or have no finite final
  loss are shown as such and kept out of every optimum.
- A configuration (model, method, rank, LR) is summarised by the mean over its seeds;
  two configurations differ "within noise" when their means are closer than
  ``NOISE_Z`` combined standard errors; with a single seed noise is unknown (None).
- Gap LoRA vs full FT: ``(best LoRA loss - best full FT loss) / best LoRA loss``, the
  reference's convention (8B: (0.717 - 0.620) / 0.717 = 13.5%; 70B: 6.3%; dividing by
  full FT's loss would give 15.6% and 6.7%).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from contracts.presets import load_presets
from reporting.fetch import SweepData
from reporting.findings import (
    Baseline,
    ExcludedRun,
    Findings,
    Gap,
    ModelFindings,
    Optimum,
    RankBestLR,
    RankIndependence,
    SizeEffect,
    TradeoffRow,
    TrainableRow,
    UnfinishedRun,
)
from reporting.heldout import DEFAULT_MARGIN, analyse_heldout
from reporting.heldout import DEFINITIONS as HELDOUT_DEFINITIONS
from reporting.numbers import finite_or_none as _num
from reporting.scaling import analyse_scaling, scaling_statements

NOISE_Z = 2.0
HIGH_RANK_MIN = 32
FINAL_LOSS_DEFINITION = (
    "logged train/final_loss (mean of the last final_loss_window logged train/loss values, "
    "10 by default); recomputed from the train/loss history when a run logged none"
)
NOISE_RULE = (
    f"means over seeds; two configurations are within noise when their means differ by at "
    f"most {NOISE_Z:g} combined standard errors; unknown with a single seed"
)


def _rank(value: object) -> int | None:
    return None if pd.isna(value) else int(value)  # type: ignore[call-overload]


# -- runs --------------------------------------------------------------------------------


def prepare_runs(data: SweepData, window: int = 10) -> pd.DataFrame:
    """The runs table plus ``final_loss``, its source, the last finite loss, and why a
    run is kept out of the optima (``excluded_reason``, empty when usable)."""
    runs = data.runs.copy()
    loss = data.history[data.history["key"] == "train/loss"].sort_values(["run_id", "step"])
    # As training.tracking.final_loss: the mean of the finite values among the last N.
    tail = loss.groupby("run_id")["value"].agg(
        lambda v: v.iloc[-window:][np.isfinite(v.iloc[-window:])].mean())
    finite = loss[np.isfinite(loss["value"])]
    last_finite = finite.groupby("run_id")["value"].last()
    logged = runs["train/final_loss"]
    from_history = runs["run_id"].map(tail).astype(float)
    has_logged = np.isfinite(logged)
    runs["final_loss"] = logged.where(has_logged, from_history)
    runs["final_loss_source"] = np.where(
        has_logged, "logged", np.where(np.isfinite(runs["final_loss"]), "history", "none"))
    runs["last_finite_loss"] = runs["run_id"].map(last_finite).astype(float)

    reasons = []
    for row in runs.itertuples(index=False):
        if row.outcome != "finished":
            reasons.append(f"outcome {row.outcome}")
        elif not math.isfinite(row.final_loss):
            reasons.append("no finite final loss")
        elif not row.model or not math.isfinite(row.lr):
            reasons.append("model or lr tag missing or invalid")
        elif row.method == "lora" and pd.isna(row.rank):
            reasons.append("LoRA run without a rank tag")
        else:
            reasons.append("")
    runs["excluded_reason"] = reasons
    return runs


def config_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Usable runs aggregated per (model, method, rank, lr): mean, std, n, sem, run ids."""
    usable = runs[runs["excluded_reason"] == ""]
    if usable.empty:
        return pd.DataFrame(columns=["model", "method", "rank", "lr", "mean", "std", "n",
                                     "sem", "run_ids"])
    grouped = usable.groupby(["model", "method", "rank", "lr"], dropna=False)
    stats = grouped["final_loss"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    stats["run_ids"] = grouped["run_id"].agg(list)
    stats = stats.reset_index()
    stats["std"] = stats["std"].where(stats["n"] > 1)
    stats["sem"] = stats["std"] / np.sqrt(stats["n"])
    return stats.sort_values(["model", "method", "rank", "lr"]).reset_index(drop=True)


def within_noise(a: pd.Series, b: pd.Series) -> bool | None:
    """Whether two configurations' means differ by at most NOISE_Z combined standard
    errors; None when either has a single seed."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    return bool(abs(a["mean"] - b["mean"]) <= NOISE_Z * math.hypot(a["sem"], b["sem"]))


def _stat(row: pd.Series) -> dict:
    return {"method": row["method"], "rank": _rank(row["rank"]), "lr": float(row["lr"]),
            "final_loss": float(row["mean"]), "std": _num(row["std"]), "n_seeds": int(row["n"]),
            "run_ids": list(row["run_ids"])}


def optimum(stats: pd.DataFrame, method: str) -> Optimum | None:
    """The lowest mean final loss of a method, and the best configuration at another LR."""
    sub = stats[stats["method"] == method].sort_values("mean", kind="stable")
    if sub.empty:
        return None
    best = sub.iloc[0]
    other = sub[sub["lr"] != best["lr"]]
    if other.empty:
        return Optimum(**_stat(best))
    runner = other.iloc[0]
    return Optimum(**_stat(best), runner_up_loss=float(runner["mean"]),
                   within_noise_of_runner_up=within_noise(best, runner))


def rank_independence(stats: pd.DataFrame, full_lr: float | None) -> RankIndependence | None:
    """LoRA's best LR per rank, the LR most ranks share, and the loss spread at that LR
    across ranks >= HIGH_RANK_MIN."""
    lora = stats[stats["method"] == "lora"]
    if lora.empty:
        return None
    best_rows = {int(rank): sub.sort_values("mean", kind="stable").iloc[0]
                 for rank, sub in lora.groupby("rank")}
    counts = pd.Series([float(r["lr"]) for r in best_rows.values()]).value_counts()
    top = counts[counts == counts.max()].index
    overall_best_lr = float(lora.sort_values("mean", kind="stable").iloc[0]["lr"])
    common = overall_best_lr if overall_best_lr in top else float(min(top))
    per_rank = []
    for rank, best in sorted(best_rows.items()):
        sub = lora[lora["rank"] == rank]
        at_common = sub[sub["lr"] == common]
        consistent = float(best["lr"]) == common or (
            not at_common.empty and within_noise(best, at_common.iloc[0]) is True)
        per_rank.append(RankBestLR(
            rank=rank, best_lr=float(best["lr"]), final_loss=float(best["mean"]),
            std=_num(best["std"]), n_seeds=int(best["n"]),
            lr_ratio_to_full=float(best["lr"]) / full_lr if full_lr else None,
            losses_by_lr={f"{lr:g}": float(m) for lr, m in zip(sub["lr"], sub["mean"],
                                                               strict=True)},
            consistent_with_common_lr=consistent,
        ))
    high = lora[(lora["lr"] == common) & (lora["rank"] >= HIGH_RANK_MIN)]
    spread = spread_pct = None
    if len(high) >= 2:
        spread = float(high["mean"].max() - high["mean"].min())
        spread_pct = 100.0 * spread / float(high["mean"].min())
    return RankIndependence(
        common_lr=common, ranks_at_common_lr=sum(r.consistent_with_common_lr for r in per_rank),
        ranks=len(per_rank),
        rank_independent=all(r.consistent_with_common_lr for r in per_rank)
        if len(per_rank) > 1 else None,
        per_rank=per_rank, high_rank_min=HIGH_RANK_MIN, high_rank_spread=spread,
        high_rank_spread_pct=spread_pct, high_ranks=sorted(int(r) for r in high["rank"]),
    )


def _config_row(stats: pd.DataFrame, best: Optimum) -> pd.Series:
    sub = stats[(stats["method"] == best.method) & (stats["lr"] == best.lr)]
    if best.rank is not None:
        sub = sub[sub["rank"] == best.rank]
    return sub.iloc[0]


def gap(stats: pd.DataFrame, lora: Optimum | None, full: Optimum | None) -> Gap | None:
    """LoRA's best final loss above full FT's (see the module docstring for the %)."""
    if lora is None or full is None:
        return None
    diff = lora.final_loss - full.final_loss
    return Gap(lora_loss=lora.final_loss, full_loss=full.final_loss, absolute=diff,
               pct=100.0 * diff / lora.final_loss, pct_of_full=100.0 * diff / full.final_loss,
               within_noise=within_noise(_config_row(stats, lora), _config_row(stats, full)))


def trainable(runs: pd.DataFrame, model: str) -> list[TrainableRow]:
    """Logged trainable fraction per LoRA rank, checked against the preset's count."""
    counts = load_presets().get(model)
    lora = runs[(runs["method"] == "lora") & runs["rank"].notna()]
    rows = []
    for rank, sub in lora.groupby("rank"):
        fraction = _num(sub["model/trainable_fraction"].mean())
        params = _num(sub["model/trainable_params"].mean())
        expected = counts.lora_fraction(int(rank)) if counts else None
        shown = fraction if fraction is not None else expected
        rows.append(TrainableRow(
            rank=int(rank), trainable_fraction=fraction, trainable_params=params,
            expected_fraction=expected,
            under_1pct=None if shown is None else shown < 0.01,
            matches_preset=None if fraction is None or expected is None
            else abs(fraction - expected) <= 0.02 * expected,
        ))
    return rows


def tradeoff(runs: pd.DataFrame) -> list[TradeoffRow]:
    """LEXam accuracy and format rate against final loss, per (method, LR)."""
    usable = runs[(runs["excluded_reason"] == "") & np.isfinite(runs["lexam/accuracy"])]
    rows = []
    for (method, lr), sub in usable.groupby(["method", "lr"]):
        rows.append(TradeoffRow(
            method=method, lr=float(lr), n_runs=len(sub),
            final_loss=_num(sub["final_loss"].mean()),
            accuracy=_num(sub["lexam/accuracy"].mean()),
            accuracy_min=_num(sub["lexam/accuracy"].min()),
            accuracy_max=_num(sub["lexam/accuracy"].max()),
            format_rate=_num(sub["lexam/format_rate"].mean()),
            loglik_accuracy=_num(sub["lexam/loglik_accuracy"].mean()),
        ))
    return rows


def _baseline(baselines: pd.DataFrame, model: str) -> Baseline | None:
    sub = baselines[(baselines["model"] == model) & np.isfinite(baselines["lexam/accuracy"])]
    if sub.empty:
        return None
    row = sub.iloc[-1]
    return Baseline(accuracy=float(row["lexam/accuracy"]),
                    format_rate=_num(row["lexam/format_rate"]),
                    loglik_accuracy=_num(row["lexam/loglik_accuracy"]),
                    chance=_num(row["lexam/chance"]), run_id=row["run_id"])


def _accuracy_at(runs: pd.DataFrame, best: Optimum | None) -> float | None:
    if best is None:
        return None
    return _num(runs[runs["run_id"].isin(best.run_ids)]["lexam/accuracy"].mean())


def _excluded(runs: pd.DataFrame) -> list[ExcludedRun]:
    return [ExcludedRun(run_id=r.run_id, run_name=r.run_name or r.run_id, method=r.method,
                        rank=_rank(r.rank), lr=_num(r.lr), outcome=r.outcome,
                        reason=r.excluded_reason)
            for r in runs[runs["excluded_reason"] != ""].itertuples(index=False)]


DEFAULT_REASONS = {"diverged": "the training loss became NaN/inf",
                   "running": "still running, or its job ended without saying how"}


def not_finished(runs: pd.DataFrame) -> list[UnfinishedRun]:
    """Every run whose outcome is not ``finished`` (diverged, oom, failed, still running),
    with its job state and reason, in run-name order."""
    rows = runs[runs["outcome"] != "finished"].sort_values("run_name")
    return [UnfinishedRun(run_id=r.run_id, run_name=r.run_name or r.run_id, model=r.model,
                          method=r.method, rank=_rank(r.rank), lr=_num(r.lr),
                          outcome=r.outcome, job_state=str(r.job_state or ""),
                          job_id=str(r.job_id or ""),
                          reason=str(r.failure_reason or DEFAULT_REASONS.get(r.outcome, "")))
            for r in rows.itertuples(index=False)]


def analyse_model(runs: pd.DataFrame, baselines: pd.DataFrame, model: str) -> ModelFindings:
    mine = runs[runs["model"] == model]
    stats = config_stats(mine)
    lora, full = optimum(stats, "lora"), optimum(stats, "full")
    counts = load_presets().get(model)
    logged_total = mine.loc[mine["method"] == "full", "model/total_params"].max()
    total = _num(logged_total) or (float(counts.total_params) if counts and
                                    counts.total_params else None)
    return ModelFindings(
        model=model, total_params=total, n_runs=len(mine),
        n_usable=int((mine["excluded_reason"] == "").sum()),
        max_seeds=int(stats["n"].max()) if not stats.empty else 0,
        lora_best=lora, full_best=full,
        lr_ratio=lora.lr / full.lr if lora and full else None,
        gap=gap(stats, lora, full),
        rank_independence=rank_independence(stats, full.lr if full else None),
        trainable=trainable(mine, model), tradeoff=tradeoff(mine),
        baseline=_baseline(baselines, model),
        lexam_at_best={"lora": _accuracy_at(mine, lora), "full": _accuracy_at(mine, full)},
        excluded=_excluded(mine),
    )


def size_effect(models: list[ModelFindings]) -> SizeEffect | None:
    """How the answers move with model size (models ordered by parameter count)."""
    if len(models) < 2:
        return None
    ordered = sorted(models, key=lambda m: (m.total_params or math.inf, m.model))
    gaps = [m.gap.pct if m.gap else None for m in ordered]
    known = [g for g in gaps if g is not None]
    return SizeEffect(
        models=[m.model for m in ordered], total_params=[m.total_params for m in ordered],
        gap_pct=gaps, lr_ratio=[m.lr_ratio for m in ordered],
        lora_best_loss=[m.lora_best.final_loss if m.lora_best else None for m in ordered],
        full_best_loss=[m.full_best.final_loss if m.full_best else None for m in ordered],
        gap_shrinks_with_size=all(a > b for a, b in zip(known, known[1:], strict=False))
        if len(known) >= 2 else None,
    )


def analyse(data: SweepData, window: int = 10, margin: float = DEFAULT_MARGIN,
            retention_metric: str = "accuracy") -> tuple[Findings, pd.DataFrame]:
    """Findings of a sweep, and the prepared runs table the figures draw from.
    ``margin``: LEXam accuracy below the base model a recommended recipe may lose, in
    ``retention_metric`` (official ``accuracy`` or ``loglik_accuracy``)."""
    runs = prepare_runs(data, window)
    models = sorted((analyse_model(runs, data.baselines, model)
                     for model in runs["model"].unique() if model),
                    key=lambda m: (m.total_params or math.inf, m.model))
    for m in models:
        m.heldout = analyse_heldout(runs, data.history, data.baselines, m.model, m.baseline,
                                    margin, retention_metric)
    effect = size_effect(models)
    findings = Findings(
        sweep_id=data.sweep_id, generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        n_runs=len(runs), final_loss_definition=FINAL_LOSS_DEFINITION, noise_rule=NOISE_RULE,
        models=models, size_effect=effect, statements=[], not_finished=not_finished(runs),
        heldout_definitions=HELDOUT_DEFINITIONS if any(m.heldout for m in models) else {},
    )
    findings.scaling = analyse_scaling(runs, data.history)
    state(findings)
    return findings, runs


def state(findings: Findings) -> None:
    """(Re)write the findings' sentences from their numbers (again after the registry
    alias is set, so the sentences name it)."""
    from reporting.statements import statements

    findings.statements = statements(findings)
    if findings.scaling is not None:
        findings.statements += scaling_statements(findings.scaling)

