"""Beyond training loss: held-out SJP, forgetting over training, the recommended recipe.

Pure pandas on the sweep's tidy tables (no I/O). Definitions, stated once here and in
findings.json (``heldout_definitions``):

- A run's curve: its checkpoints' metrics at their steps and its final model's at its last
  step (``lexam/*``, ``sjp/*``, ``eval/loss``); a configuration's curve is the mean over its
  seeds at each step.
- Retention: LEXam accuracy minus the base model's (in accuracy points; 0 = nothing lost).
- Retention drops "beyond noise" at a step when the 95% paired-bootstrap interval of that
  difference (over questions, logged by the evaluation) lies below zero for at least half
  of the LR's runs there (all ranks and seeds); runs without the bootstrap use a normal
  approximation from the two accuracies and the number of questions.
- Loss order: Spearman rank correlation between final training loss and final held-out
  macro-F1 across usable runs; the orders agree when it is at most ``AGREE_RHO``.
- Recommendation: among every (method, rank, LR, step) whose mean LEXam accuracy is at
  least the base model's minus the margin, the best mean held-out macro-F1 (ties: higher
  LEXam accuracy, then the earlier step, then the lower rank).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reporting.findings import (
    Baseline,
    Candidate,
    Curve,
    CurvePoint,
    HeldoutFindings,
    LossOrder,
    Recommendation,
    RetentionDrop,
    SjpBaseline,
    TradeoffPoint,
)
from reporting.numbers import finite_or_none as _num

DEFAULT_MARGIN = 0.02
AGREE_RHO = -0.5
Z95 = 1.96
RETENTION_METRICS = {"accuracy": "official accuracy", "loglik_accuracy": "log-likelihood accuracy"}
CURVE_COLUMNS = tuple(f"lexam/{m}{suffix}" for m in RETENTION_METRICS
                      for suffix in ("", "_delta", "_delta_low", "_delta_high")) + (
    "lexam/n_questions", "sjp/macro_f1", "sjp/accuracy", "eval/loss")
DEFINITIONS = {
    "curve": "checkpoint metrics at their steps, the final model's at the run's last step; "
             "configurations averaged over seeds",
    "retention": "LEXam accuracy minus the base model's (accuracy points; 0 = nothing lost)",
    "retention_drop": "first step at which the 95% paired-bootstrap interval (over questions) "
                      "of accuracy minus base lies below zero for at least half of the LR's "
                      "runs (normal approximation where a run logged no bootstrap)",
    "loss_order": f"Spearman rank correlation of final training loss and held-out macro-F1 "
                  f"across runs; the orders agree at rho <= {AGREE_RHO:g}",
    "recommendation": "best mean held-out SJP macro-F1 among recipes (method, rank, LR, step) "
                      "whose mean LEXam accuracy is at least the base model's minus the "
                      "margin; ties: higher LEXam accuracy, earlier step, lower rank",
    "sjp": "held-out SJP cases, outcome = the likelier of 'approval' and 'dismissal' after "
           "the prompt; macro-F1 = mean of the two classes' F1; majority baseline = the most "
           "common training outcome for every case",
}


def _int(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)  # type: ignore[call-overload]


# -- per-step table ----------------------------------------------------------------------


def step_table(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """One row per (usable run, evaluated step); ``final`` marks the run's final model,
    whose values are the run's summary metrics (MLflow's latest value)."""
    usable = runs[runs["excluded_reason"] == ""]
    curve = history[history["key"].isin(CURVE_COLUMNS) & (history["step"] > 0)
                    & history["run_id"].isin(usable["run_id"])]
    points = (curve.pivot_table(index=["run_id", "step"], columns="key", values="value",
                                aggfunc="last").reset_index()
              if not curve.empty else pd.DataFrame(columns=["run_id", "step"]))
    rows = []
    for run in usable.to_dict("records"):
        if _num(run["lexam/accuracy"]) is None and _num(run["sjp/macro_f1"]) is None:
            continue  # never evaluated
        mine = points[points["run_id"] == run["run_id"]]
        last = _num(run["train/global_steps"])
        step = int(last) if last else int(max(mine["step"].max() if not mine.empty else 0,
                                               run["last_step"] or 0))
        attrs = {k: run[k] for k in ("run_id", "run_name", "model", "method", "rank", "lr",
                                     "seed", "final_loss")}
        rows.append({**attrs, "step": step, "final": True,
                     **{key: run.get(key, np.nan) for key in CURVE_COLUMNS}})
        for point in mine[mine["step"] < step].to_dict("records"):
            rows.append({**attrs, "step": int(point["step"]), "final": False,
                         **{key: point.get(key, np.nan) for key in CURVE_COLUMNS}})
    columns = ["run_id", "run_name", "model", "method", "rank", "lr", "seed", "final_loss",
               "step", "final", *CURVE_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    for key in (*CURVE_COLUMNS, "final_loss", "lr"):
        table[key] = table[key].astype(float)
    table["final"] = table["final"].astype(bool)
    return table.sort_values(["model", "method", "rank", "lr", "seed", "step"]
                             ).reset_index(drop=True)


def with_metric(steps: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The step table with the retention metric's columns as ``acc``, ``acc_delta``,
    ``acc_low``, ``acc_high`` (official or log-likelihood accuracy)."""
    key = f"lexam/{metric}"
    return steps.assign(acc=steps[key], acc_delta=steps[f"{key}_delta"],
                        acc_low=steps[f"{key}_delta_low"], acc_high=steps[f"{key}_delta_high"])


def config_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, rank, lr, step): means and spreads over seeds."""
    if steps.empty:
        return pd.DataFrame()
    keys = ["model", "method", "rank", "lr", "step"]
    grouped = steps.groupby(keys, dropna=False)
    out = grouped.agg(
        lexam_accuracy=("acc", "mean"), lexam_accuracy_std=("acc", "std"),
        accuracy_delta=("acc_delta", "mean"),
        sjp_macro_f1=("sjp/macro_f1", "mean"), sjp_macro_f1_std=("sjp/macro_f1", "std"),
        sjp_accuracy=("sjp/accuracy", "mean"), eval_loss=("eval/loss", "mean"),
        final_loss=("final_loss", "mean"), final=("final", "all"),
        n_seeds=("run_id", "nunique"),
    ).reset_index()
    out["run_ids"] = grouped["run_id"].agg(list).values
    return out


# -- the pieces of the findings ------------------------------------------------------------


def sjp_baseline(baselines: pd.DataFrame, model: str) -> SjpBaseline | None:
    sub = baselines[(baselines["model"] == model) & np.isfinite(baselines["sjp/macro_f1"])]
    if sub.empty:
        return None
    row = sub.iloc[-1]
    return SjpBaseline(
        macro_f1=_num(row["sjp/macro_f1"]), accuracy=_num(row["sjp/accuracy"]),
        loss=_num(row["sjp/loss"]), majority_macro_f1=_num(row["sjp/majority_macro_f1"]),
        majority_accuracy=_num(row["sjp/majority_accuracy"]),
        n_cases=_int(row["sjp/n_cases"]), split_hash=str(row.get("sjp_split_hash", "")),
        run_id=row["run_id"])


def curves(configs: pd.DataFrame) -> list[Curve]:
    out = []
    if configs.empty:
        return out
    for (method, rank, lr), sub in configs.groupby(["method", "rank", "lr"], dropna=False):
        points = [CurvePoint(
            step=int(r.step), final=bool(r.final), lexam_accuracy=_num(r.lexam_accuracy),
            lexam_accuracy_std=_num(r.lexam_accuracy_std), accuracy_delta=_num(r.accuracy_delta),
            sjp_macro_f1=_num(r.sjp_macro_f1), sjp_macro_f1_std=_num(r.sjp_macro_f1_std),
            eval_loss=_num(r.eval_loss), n_seeds=int(r.n_seeds))
            for r in sub.sort_values("step").itertuples(index=False)]
        out.append(Curve(method=str(method), rank=_int(rank), lr=float(lr), points=points))
    return out


def _interval(row: dict, base: float | None) -> tuple[float, float, float, str] | None:
    """(delta, low, high, how) of one run at one step against the base model."""
    if _num(row["acc_high"]) is not None:
        return (float(row["acc_delta"]), float(row["acc_low"]), float(row["acc_high"]),
                "bootstrap")
    accuracy, n = _num(row["acc"]), _num(row["lexam/n_questions"])
    if accuracy is None or base is None or not n:
        return None
    delta = accuracy - base
    se = math.sqrt((accuracy * (1 - accuracy) + base * (1 - base)) / n)
    return delta, delta - Z95 * se, delta + Z95 * se, "normal approximation"


def retention_drops(steps: pd.DataFrame, base_accuracy: float | None) -> list[RetentionDrop]:
    """Per (method, LR): the first step where at least half its runs lost LEXam accuracy
    beyond the noise."""
    out = []
    if steps.empty:
        return out
    for (method, lr), sub in steps.groupby(["method", "lr"]):
        evaluated = sorted(int(s) for s in sub["step"].unique())
        chosen, first = None, None
        for step in evaluated:
            at = sub[sub["step"] == step].to_dict("records")
            rows = [(r, iv) for r in at if (iv := _interval(r, base_accuracy)) is not None]
            if not rows:
                continue
            dropped = [iv for _, iv in rows if iv[2] < 0]
            chosen = (step, rows, dropped)
            if len(dropped) * 2 >= len(rows) and dropped:
                first = step
                break
        if chosen is None:
            continue
        step, rows, dropped = chosen
        intervals = [iv for _, iv in rows]
        out.append(RetentionDrop(
            method=str(method), lr=float(lr), steps=evaluated, first_step=first,
            runs_dropped=len(dropped), runs=len(rows),
            accuracy=_num(np.mean([r["acc"] for r, _ in rows])),
            delta=float(np.mean([iv[0] for iv in intervals])),
            delta_low=float(np.mean([iv[1] for iv in intervals])),
            delta_high=float(np.mean([iv[2] for iv in intervals])),
            noise="bootstrap" if all(iv[3] == "bootstrap" for iv in intervals)
            else "normal approximation"))
    return out


def loss_order(steps: pd.DataFrame) -> LossOrder | None:
    """Spearman's rho of final training loss and final held-out macro-F1 across runs."""
    final = steps[steps["final"]] if not steps.empty else steps
    final = final[np.isfinite(final["final_loss"].astype(float))
                  & np.isfinite(final["sjp/macro_f1"].astype(float))] if not final.empty else final
    if final.empty:
        return None
    loss, f1 = final["final_loss"].astype(float), final["sjp/macro_f1"].astype(float)
    rho = pair = None
    if len(final) >= 3 and loss.nunique() > 1 and f1.nunique() > 1:
        rho = float(loss.rank().corr(f1.rank()))
        agree = total = 0
        values = list(zip(loss, f1, strict=True))
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                dl, df = values[i][0] - values[j][0], values[i][1] - values[j][1]
                if dl and df:
                    total += 1
                    agree += (dl < 0) == (df > 0)
        pair = agree / total if total else None
    low, best = final.loc[loss.idxmin()], final.loc[f1.idxmax()]
    return LossOrder(
        n_runs=len(final), spearman=rho, pair_agreement=pair,
        agrees=None if rho is None else rho <= AGREE_RHO,
        lowest_loss_run=low["run_name"], lowest_loss=float(low["final_loss"]),
        lowest_loss_macro_f1=float(low["sjp/macro_f1"]), best_macro_f1_run=best["run_name"],
        best_macro_f1=float(best["sjp/macro_f1"]), best_macro_f1_loss=float(best["final_loss"]))


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both axes (higher is better on each)."""
    flags = []
    for i, (x, y) in enumerate(points):
        beaten = any((ox >= x and oy >= y) and (ox > x or oy > y)
                     for j, (ox, oy) in enumerate(points) if j != i)
        flags.append(not beaten)
    return flags


def tradeoff_points(steps: pd.DataFrame, base: float | None) -> list[TradeoffPoint]:
    if steps.empty or base is None:
        return []
    final = steps[steps["final"] & np.isfinite(steps["acc"])
                  & np.isfinite(steps["sjp/macro_f1"])].to_dict("records")
    flags = pareto_flags([(r["acc"] - base, r["sjp/macro_f1"]) for r in final])
    return [TradeoffPoint(
        run_id=row["run_id"], run_name=row["run_name"] or row["run_id"], method=row["method"],
        rank=_int(row["rank"]), lr=float(row["lr"]), seed=_int(row["seed"]),
        final_loss=_num(row["final_loss"]), lexam_accuracy=float(row["acc"]),
        retention=float(row["acc"]) - base,
        sjp_macro_f1=float(row["sjp/macro_f1"]), pareto=flag)
        for row, flag in zip(final, flags, strict=True)]


def _candidate(row: pd.Series, steps: pd.DataFrame, base: float | None) -> Candidate:
    mine = steps[steps["run_id"].isin(row["run_ids"]) & (steps["step"] == row["step"])]
    best_run = mine.loc[mine["sjp/macro_f1"].astype(float).idxmax(), "run_id"]
    accuracy = float(row["lexam_accuracy"])
    return Candidate(
        method=row["method"], rank=_int(row["rank"]), lr=float(row["lr"]),
        step=int(row["step"]), final=bool(row["final"]),
        sjp_macro_f1=float(row["sjp_macro_f1"]), sjp_macro_f1_std=_num(row["sjp_macro_f1_std"]),
        sjp_accuracy=_num(row["sjp_accuracy"]), lexam_accuracy=accuracy,
        lexam_accuracy_std=_num(row["lexam_accuracy_std"]),
        retention=None if base is None else accuracy - base,
        final_loss=_num(row["final_loss"]), n_seeds=int(row["n_seeds"]),
        run_ids=list(row["run_ids"]), best_run_id=str(best_run))


def recommend(configs: pd.DataFrame, steps: pd.DataFrame, base: float | None,
              margin: float = DEFAULT_MARGIN, noise_z: float = 2.0,
              metric: str = "accuracy") -> Recommendation | None:
    """The recipe with the best held-out macro-F1 that keeps LEXam within ``margin``."""
    if configs.empty:
        return None
    scored = configs[np.isfinite(configs["sjp_macro_f1"].astype(float))
                     & np.isfinite(configs["lexam_accuracy"].astype(float))]
    rule = (f"best mean held-out SJP macro-F1 among recipes whose mean LEXam "
            f"{RETENTION_METRICS[metric]} is at least the base model's minus "
            f"{100 * margin:g} points")
    common = {"margin": margin, "rule": rule, "n_candidates": len(scored),
              "single_seed": bool(scored.empty or scored["n_seeds"].max() <= 1),
              "base_accuracy": base, "metric": metric}
    if scored.empty:
        return Recommendation(**common, n_within_margin=0, best=None, runner_up=None,
                              within_noise_of_runner_up=None,
                              reason="no recipe has both LEXam and held-out SJP metrics")
    if base is None:
        return Recommendation(**common, n_within_margin=0, best=None, runner_up=None,
                              within_noise_of_runner_up=None,
                              reason="no base-model LEXam baseline: the margin cannot be applied")
    kept = scored[scored["lexam_accuracy"] >= base - margin - 1e-12].copy()
    if kept.empty:
        return Recommendation(**common, n_within_margin=0, best=None, runner_up=None,
                              within_noise_of_runner_up=None,
                              reason=f"no recipe keeps LEXam accuracy within {100 * margin:g} "
                                     "points of the base model")
    kept["_rank"] = kept["rank"].astype(float).fillna(-1)
    kept = kept.sort_values(["sjp_macro_f1", "lexam_accuracy", "step", "_rank"],
                            ascending=[False, False, True, True], kind="stable")
    best = _candidate(kept.iloc[0], steps, base)
    runner = _candidate(kept.iloc[1], steps, base) if len(kept) > 1 else None
    noise = None
    if runner and best.n_seeds > 1 and runner.n_seeds > 1 and best.sjp_macro_f1_std is not None \
            and runner.sjp_macro_f1_std is not None:
        se = math.hypot(best.sjp_macro_f1_std / math.sqrt(best.n_seeds),
                        runner.sjp_macro_f1_std / math.sqrt(runner.n_seeds))
        noise = abs(best.sjp_macro_f1 - runner.sjp_macro_f1) <= noise_z * se
    return Recommendation(**common, n_within_margin=len(kept), best=best, runner_up=runner,
                          within_noise_of_runner_up=noise)


def analyse_heldout(runs: pd.DataFrame, history: pd.DataFrame, baselines: pd.DataFrame,
                    model: str, base: Baseline | None, margin: float = DEFAULT_MARGIN,
                    metric: str = "accuracy") -> HeldoutFindings | None:
    """Everything beyond training loss for one base model; None without any evaluation.
    ``metric``: the LEXam accuracy retention is measured in (``accuracy``, the official
    one, or ``loglik_accuracy`` where answers are too short to carry the official format)."""
    if metric not in RETENTION_METRICS:
        raise ValueError(f"retention_metric: {metric!r} is not one of "
                         f"{', '.join(RETENTION_METRICS)}")
    steps = with_metric(step_table(runs[runs["model"] == model], history), metric)
    sjp_base = sjp_baseline(baselines, model)
    if steps.empty and sjp_base is None:
        return None
    level = None if base is None else getattr(base, metric)
    configs = config_steps(steps)
    return HeldoutFindings(
        metric=metric, base_level=level, sjp_baseline=sjp_base, curves=curves(configs),
        retention=retention_drops(steps, level), loss_order=loss_order(steps),
        tradeoff=tradeoff_points(steps, level),
        recommendation=recommend(configs, steps, level, margin, metric=metric))
