"""The engineering questions: how training scales with nodes and ZeRO stage, which layouts
run out of memory, and what the cheapest working layout costs (pure pandas, no I/O).

Only runs that name their layout (tag ``nodes``) count. A layout is (model, method, ZeRO
stage, nodes, GPUs per node); its numbers are means over its runs. Throughput is samples
per second (``train/samples_per_second_mean``) and tokens per second (mean of
``train/tokens_per_second`` over logged steps after the first). Speedup is against the
smallest working layout of the same (model, method, ZeRO stage); efficiency divides it
by the ratio of world sizes (1.0 = linear scaling).
GPU-hours per run: the cluster's accounting (``cost/gpu_hours_accounted``) when present,
else the job's own ``cost/gpu_hours`` (runtime x GPUs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reporting.findings import Scaling, ScalingPoint, Statement
from reporting.labels import model_label
from reporting.numbers import finite_or_none as _num

DEFINITION = (
    "layouts are (model, method, ZeRO stage, nodes x GPUs per node), means over their runs; "
    "speedup = throughput (samples/s) / that of the group's smallest working layout; "
    "efficiency = speedup / world-size ratio (1 = linear); GPU-hours per run from the "
    "cluster's accounting when logged, else runtime x GPUs; OOM = outcome oom")
QUESTION = "Engineering: scaling, memory and cost"
WORKING = "finished"
OUTCOME_ORDER = ("oom", "failed", "diverged", "running", "finished")


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return _num(values.mean()) if len(values) else None


def _step_means(history: pd.DataFrame, key: str) -> pd.Series:
    rows = history[history["key"] == key].sort_values(["run_id", "step"])
    rows = rows[rows.groupby("run_id").cumcount() > 0]  # the first step includes warm-up
    return rows.groupby("run_id")["value"].mean()


def layout_rows(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Runs that name their layout, with throughput and cost columns filled in."""
    mine = runs[runs["nodes"].notna()].copy()
    if mine.empty:
        return mine
    tokens = _step_means(history, "train/tokens_per_second")
    mine["tokens_per_second"] = mine["run_id"].map(tokens).astype(float)
    mine["samples_per_second"] = mine["train/samples_per_second_mean"]
    accounted = mine["cost/gpu_hours_accounted"]
    mine["gpu_hours"] = accounted.where(np.isfinite(accounted), mine["cost/gpu_hours"])
    mine["gpu_hours_source"] = np.where(
        np.isfinite(accounted), "accounted",
        np.where(np.isfinite(mine["cost/gpu_hours"]), "logged", "none"))
    return mine


def _point(group: pd.DataFrame, key: tuple) -> ScalingPoint:
    model, method, zero, nodes, gpus = key
    outcomes = set(group["outcome"])
    outcome = next((o for o in OUTCOME_ORDER if o in outcomes), sorted(outcomes)[0])
    working = group[group["outcome"] == WORKING]
    use = working if not working.empty else group
    world = _mean(group["train/world_size"])
    if world is None:
        world = float(nodes * max(gpus if gpus is not None else 1, 1))
    sources = set(use["gpu_hours_source"])
    reasons = [r for r in group["failure_reason"] if r]
    return ScalingPoint(
        model=model, method=method, zero_stage=zero, nodes=int(nodes), gpus_per_node=gpus,
        world_size=int(world), outcome=outcome, n_runs=len(group),
        samples_per_second=_mean(working["samples_per_second"]),
        tokens_per_second=_mean(working["tokens_per_second"]),
        time_to_train_s=_mean(working["train/runtime_s"]),
        time_to_first_step_s=_mean(working["train/time_to_first_step_s"]),
        gpu_hours=_mean(use["gpu_hours"]),
        gpu_hours_source="accounted" if "accounted" in sources else
        ("logged" if "logged" in sources else "none"),
        peak_accelerator_mb=_mean(working["memory/peak_accelerator_mb"]),
        final_loss=_mean(working["final_loss"]) if "final_loss" in working else None,
        lexam_accuracy=_mean(working["lexam/accuracy"]),
        speedup=None, efficiency=None, failure_reason=reasons[0][:300] if reasons else "",
        predicted_gb=_mean(group["memory/plan_total_gb"]),
        gpu_memory_gb=_mean(group["memory/plan_gpu_memory_gb"]),
    )


def _with_speedup(points: list[ScalingPoint]) -> list[ScalingPoint]:
    out = []
    groups: dict[tuple, list[ScalingPoint]] = {}
    for p in points:
        groups.setdefault((p.model, p.method, p.zero_stage), []).append(p)
    for group in groups.values():
        working = [p for p in group if p.outcome == WORKING and p.samples_per_second]
        base = min(working, key=lambda p: (p.world_size or 0, p.nodes), default=None)
        for p in sorted(group, key=lambda p: (p.world_size or 0, p.nodes)):
            if base and p in working:
                speedup = p.samples_per_second / base.samples_per_second  # type: ignore[operator]
                ratio = (p.world_size or 1) / (base.world_size or 1)
                p = p.model_copy(update={"speedup": speedup, "efficiency": speedup / ratio})
            out.append(p)
    return out


def analyse_scaling(runs: pd.DataFrame, history: pd.DataFrame) -> Scaling | None:
    """The scaling findings, or None when no run of the sweep names its layout."""
    if "nodes" not in runs:
        return None
    rows = layout_rows(runs, history)
    if rows.empty:
        return None
    keys = ["model", "method", "zero_stage", "nodes", "gpus_per_node"]
    points = []
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        model, method, zero, nodes, gpus = key
        clean = (model, method, None if pd.isna(zero) else int(zero), int(nodes),
                 None if pd.isna(gpus) else int(gpus))
        points.append(_point(group, clean))
    points = _with_speedup(points)
    points.sort(key=lambda p: (p.model, p.method, p.zero_stage if p.zero_stage is not None
                               else -1, p.nodes))
    cheapest: dict[str, ScalingPoint] = {}
    for p in points:
        if p.outcome != WORKING or p.gpu_hours is None:
            continue
        best = cheapest.get(p.model)
        if best is None or (p.gpu_hours, p.world_size or 0) < (best.gpu_hours,
                                                               best.world_size or 0):
            cheapest[p.model] = p
    return Scaling(definition=DEFINITION, points=points,
                   oom=[p for p in points if p.outcome == "oom"], cheapest=cheapest)


def layout_label(p: ScalingPoint) -> str:
    gpus = f" x {p.gpus_per_node} GPUs" if p.gpus_per_node else ""
    zero = f", ZeRO-{p.zero_stage}" if p.zero_stage is not None else ""
    return f"{p.nodes} node{'s' if p.nodes != 1 else ''}{gpus}{zero}"


def scaling_statements(scaling: Scaling) -> list[Statement]:
    out: list[Statement] = []
    models = sorted({p.model for p in scaling.points})
    for model in models:
        mine = [p for p in scaling.points if p.model == model]
        for zero in sorted({p.zero_stage for p in mine}, key=lambda z: -1 if z is None else z):
            group = [p for p in mine if p.zero_stage == zero and p.speedup is not None]
            if len(group) >= 2:
                first, last = group[0], group[-1]
                out.append(Statement(
                    id=f"scaling.{model}.zero{zero}", question=QUESTION, model=model,
                    text=f"{model_label(model)}{'' if zero is None else f', ZeRO-{zero}'}: "
                         f"from {first.nodes} to {last.nodes} nodes throughput grows "
                         f"{last.speedup:.2f}x for {last.world_size / first.world_size:.0f}x "
                         f"the GPUs (scaling efficiency {100 * last.efficiency:.0f}%)."))
        ooms = [p for p in scaling.oom if p.model == model]
        if ooms:
            out.append(Statement(
                id=f"scaling.{model}.oom", question=QUESTION, model=model,
                text=f"{model_label(model)} ran out of memory with "
                     + "; ".join(layout_label(p) for p in ooms) + "."))
        planned = [p for p in mine if p.predicted_oom is not None
                   and p.outcome in ("finished", "oom")]
        if planned:
            out.append(plan_statement(model, planned))
        best = scaling.cheapest.get(model)
        if best is not None:
            out.append(Statement(
                id=f"scaling.{model}.cheapest", question=QUESTION, model=model,
                text=f"{model_label(model)}: the cheapest layout that fits is "
                     f"{layout_label(best)} at {best.gpu_hours:.2f} GPU-hours per run "
                     f"({best.gpu_hours_source})."))
    return out


def plan_statement(model: str, planned: list[ScalingPoint]) -> Statement:
    """How the memory plan's predictions compare with what ran out of memory."""
    agree = [p for p in planned if p.predicted_oom == (p.outcome == "oom")]
    ran = [p for p in planned if p.predicted_oom and p.outcome != "oom"]
    missed = [p for p in planned if not p.predicted_oom and p.outcome == "oom"]
    text = (f"{model_label(model)}: the memory plan agreed with the outcome on "
            f"{len(agree)} of {len(planned)} layouts")
    if ran:
        text += "; predicted OOM but ran: " + "; ".join(
            f"{layout_label(p)} ({p.predicted_gb:.0f} GB planned > {p.gpu_memory_gb:g})"
            for p in ran)
    if missed:
        text += "; ran out of memory though predicted to fit: " + "; ".join(
            f"{layout_label(p)} ({p.predicted_gb:.0f} GB planned)" for p in missed)
    return Statement(id=f"scaling.{model}.memory_plan", question=QUESTION, model=model,
                     text=text + ".")
