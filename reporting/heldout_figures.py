"""The figures beyond training loss (matplotlib, Agg; PNG and SVG like the others).

- ``forgetting_curves``: per model, LEXam accuracy (top row) and held-out SJP macro-F1
  (bottom row) against the training step, one column per learning rate, one line per
  LoRA rank (viridis) and full FT dashed black; every line starts at step 0 from the
  untouched base model (which it is), whose level is drawn dashed; a red dotted line marks
  where retention first drops beyond noise; bands are the spread over seeds.
- ``task_vs_retention``: per model, every run's final model as held-out macro-F1 against
  LEXam retention (accuracy minus the base model's), coloured by LR; the Pareto front
  (no run better on both) is joined and ringed, the margin the recommendation allows is
  shaded, the recommended recipe is a star.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from reporting.figures import FULL_COLOR, _save, lr_colors, rank_colors  # noqa: E402
from reporting.findings import Curve, Findings, ModelFindings  # noqa: E402
from reporting.labels import lr_label, model_label  # noqa: E402

BASE_COLOR = "#555555"
DROP_COLOR = "#D55E00"
PANELS = (("lexam_accuracy", "lexam_accuracy_std", "LEXam {metric} (%)"),
          ("sjp_macro_f1", "sjp_macro_f1_std", "held-out SJP macro-F1 (%)"))
METRIC_NAMES = {"accuracy": "accuracy", "loglik_accuracy": "log-lik. accuracy"}


def _with_curves(findings: Findings) -> list[ModelFindings]:
    """Models evaluated over training (a checkpoint) or on held-out SJP: a sweep evaluated
    only at the end has no curve to draw (its tradeoff figure shows it)."""
    return [m for m in findings.models if m.heldout and any(
        not p.final or p.sjp_macro_f1 is not None for c in m.heldout.curves for p in c.points)]


def _base_levels(m: ModelFindings) -> dict[str, float | None]:
    sjp = m.heldout.sjp_baseline if m.heldout else None
    return {"lexam_accuracy": m.heldout.base_level if m.heldout else None,
            "sjp_macro_f1": sjp.macro_f1 if sjp else None,
            "chance": m.baseline.chance if m.baseline else None,
            "majority": sjp.majority_macro_f1 if sjp else None}


def _draw_curve(ax: plt.Axes, curve: Curve, field: str, spread: str, start: float | None,
                color: object, style: str, width: float) -> None:
    points = [p for p in curve.points if getattr(p, field) is not None]
    if not points:
        return
    steps = [p.step for p in points]
    values = [100 * getattr(p, field) for p in points]
    ax.plot(steps, values, color=color, ls=style, lw=width, marker="o", ms=3.5, zorder=3)
    if start is not None:  # the untouched base model is every run's step 0
        ax.plot([0, steps[0]], [100 * start, values[0]], color=color, ls=":", lw=width * 0.8,
                zorder=2)
    stds = [getattr(p, spread) for p in points]
    if any(s is not None for s in stds):
        low = [v - 100 * (s or 0) for v, s in zip(values, stds, strict=True)]
        high = [v + 100 * (s or 0) for v, s in zip(values, stds, strict=True)]
        ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)


def forgetting_curves(findings: Findings, out_dir: Path) -> list[Path]:
    models = _with_curves(findings)
    if not models:
        return []
    columns = max(len({c.lr for c in m.heldout.curves}) for m in models)  # type: ignore[union-attr]
    ranks = sorted({c.rank for m in models for c in m.heldout.curves  # type: ignore[union-attr]
                    if c.rank is not None})
    colors = rank_colors(ranks)
    fig, axes = plt.subplots(2 * len(models), columns, squeeze=False, sharex="row",
                             figsize=(4.3 * columns + 1.8, 3.1 * 2 * len(models) + 0.6))
    for block, m in enumerate(models):
        assert m.heldout is not None
        levels = _base_levels(m)
        lrs = sorted({c.lr for c in m.heldout.curves})
        drops = {(d.method, d.lr): d for d in m.heldout.retention}
        for col in range(columns):
            for row, (field, spread, label) in enumerate(PANELS):
                ax = axes[2 * block + row][col]
                if col >= len(lrs):
                    ax.set_visible(False)
                    continue
                lr = lrs[col]
                for curve in m.heldout.curves:
                    if curve.lr != lr:
                        continue
                    lora = curve.method == "lora"
                    _draw_curve(ax, curve, field, spread, levels[field],
                                colors[curve.rank] if lora and curve.rank else FULL_COLOR,
                                "-" if lora else "--", 1.4 if lora else 2.0)
                base = levels[field]
                if base is not None:
                    ax.axhline(100 * base, color=BASE_COLOR, ls="--", lw=1.1)
                    ax.annotate(f"base model {100 * base:.1f}%", (0.01, 100 * base),
                                xycoords=("axes fraction", "data"), va="bottom", fontsize=7,
                                color=BASE_COLOR)
                floor = levels["chance" if row == 0 else "majority"]
                if floor is not None:
                    ax.axhline(100 * floor, color="#999999", ls=":", lw=1.1)
                    ax.annotate(f"{'chance' if row == 0 else 'majority class'} "
                                f"{100 * floor:.0f}%", (0.01, 100 * floor),
                                xycoords=("axes fraction", "data"), va="top", fontsize=7,
                                color="#777777")
                at: dict[int, list[str]] = {}
                for method in ("lora", "full"):
                    drop = drops.get((method, lr))
                    if row == 0 and drop and drop.first_step is not None:
                        at.setdefault(drop.first_step, []).append(
                            "LoRA" if method == "lora" else "full FT")
                for n, (step, who) in enumerate(sorted(at.items())):
                    ax.axvline(step, color=DROP_COLOR, ls=":", lw=1.4)
                    ax.annotate(f"{' + '.join(who)}: below base\nbeyond noise from {step}",
                                (step, 0.45 + 0.14 * n), xycoords=("data", "axes fraction"),
                                fontsize=7, ha="left", va="bottom", color=DROP_COLOR,
                                xytext=(3, 0), textcoords="offset points",
                                bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})
                if row == 0:
                    ax.set_title(f"{model_label(m.model)} · LR {lr_label(lr)}", fontsize=9)
                if col == 0:
                    ax.set_ylabel(label.format(metric=METRIC_NAMES.get(m.heldout.metric,
                                                                       m.heldout.metric)))
                if row == 1:
                    ax.set_xlabel("optimizer step (0 = untouched base model)")
                ax.set_xlim(left=0)
                ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[r], marker="o", ms=3.5, label=f"LoRA r={r}")
               for r in ranks]
    handles += [Line2D([], [], color=FULL_COLOR, ls="--", lw=2.0, marker="o", ms=3.5,
                       label="full FT"),
                Line2D([], [], color=BASE_COLOR, ls="--", label="untouched base model"),
                Line2D([], [], color="#999999", ls=":", label="chance / majority class"),
                Line2D([], [], color=DROP_COLOR, ls=":", label="retention drops beyond\n"
                                                               "noise (bootstrap)"),
                Patch(color="grey", alpha=0.2, label="spread over seeds (± std)")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Forgetting over training — sweep {findings.sweep_id}: LEXam (top) and "
                 "held-out SJP (bottom) at each evaluated checkpoint", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "forgetting_curves")


def task_vs_retention(findings: Findings, out_dir: Path) -> list[Path]:
    models = [m for m in findings.models if m.heldout and m.heldout.tradeoff]
    if not models:
        return []
    colors = lr_colors(sorted({p.lr for m in models for p in m.heldout.tradeoff}))  # type: ignore[union-attr]
    fig, axes = plt.subplots(1, len(models), squeeze=False,
                             figsize=(5.6 * len(models) + 2.0, 4.8))
    for ax, m in zip(axes[0], models, strict=True):
        h = m.heldout
        assert h is not None
        points = h.tradeoff
        for p in points:
            ax.scatter(100 * p.retention, 100 * p.sjp_macro_f1, color=colors[p.lr],
                       marker="o" if p.method == "lora" else "s", s=34 if p.method == "lora"
                       else 55, edgecolor="black" if p.method == "full" else "none", zorder=3)
        front = sorted((p for p in points if p.pareto), key=lambda p: p.retention)
        if front:
            ax.plot([100 * p.retention for p in front], [100 * p.sjp_macro_f1 for p in front],
                    color="black", lw=1.0, ls="-", drawstyle="steps-post", zorder=2)
            ax.scatter([100 * p.retention for p in front], [100 * p.sjp_macro_f1 for p in front],
                       s=150, facecolor="none", edgecolor="black", lw=1.2, zorder=4)
        r = h.recommendation
        if r is not None:
            ax.axvspan(-100 * r.margin, max([100 * p.retention for p in points] + [0]) + 1,
                       color="#009E73", alpha=0.08, lw=0)
            ax.axvline(-100 * r.margin, color="#009E73", lw=1.0, ls="--")
            if r.best and r.best.retention is not None:
                ax.scatter([100 * r.best.retention], [100 * r.best.sjp_macro_f1], marker="*",
                           s=320, color="#CC79A7", edgecolor="black", lw=0.8, zorder=5)
                where = "final" if r.best.final else "checkpoint"
                ax.annotate(f"recommended ({where}, step {r.best.step})",
                            (100 * r.best.retention, 100 * r.best.sjp_macro_f1),
                            xytext=(9, 4), textcoords="offset points", fontsize=7,
                            color="#8B3A73")
        sjp = h.sjp_baseline
        if sjp and sjp.macro_f1 is not None:
            ax.scatter([0], [100 * sjp.macro_f1], marker="D", s=60, color=BASE_COLOR, zorder=5)
            ax.annotate("base model", (0, 100 * sjp.macro_f1), xytext=(6, -10),
                        textcoords="offset points", fontsize=7, color=BASE_COLOR)
        if sjp and sjp.majority_macro_f1 is not None:
            ax.axhline(100 * sjp.majority_macro_f1, color="#999999", ls=":", lw=1.1)
            ax.annotate(f"majority class {100 * sjp.majority_macro_f1:.0f}%",
                        (0.01, 100 * sjp.majority_macro_f1), xycoords=("axes fraction", "data"),
                        va="bottom", fontsize=7, color="#777777")
        ax.axvline(0, color=BASE_COLOR, lw=0.8)
        metric = METRIC_NAMES.get(h.metric, h.metric)
        ax.set_xlabel(f"LEXam retention: {metric} − base model (points)")
        ax.set_ylabel("held-out SJP macro-F1 (%)")
        ax.set_title(model_label(m.model), fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f"LR {lr_label(lr)}")
               for lr, c in colors.items()]
    handles += [Line2D([], [], marker="o", ls="", color="grey", label="LoRA (any rank)"),
                Line2D([], [], marker="s", ls="", color="grey", mec="black", label="full FT"),
                Line2D([], [], marker="o", ls="-", color="black", mfc="none", ms=10,
                       label="Pareto front"),
                Line2D([], [], marker="*", ls="", color="#CC79A7", mec="black", ms=14,
                       label="recommended"),
                Line2D([], [], marker="D", ls="", color=BASE_COLOR, label="untouched base"),
                Patch(color="#009E73", alpha=0.15, label="within the LEXam margin")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Task skill vs retained legal knowledge — sweep {findings.sweep_id} "
                 "(each run's final model; up and right is better)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "task_vs_retention")
