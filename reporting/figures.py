"""The report's figures (matplotlib, Agg), each written as PNG and SVG.

1. ``lr_sweep``: final loss vs LR per model, one line per LoRA rank, full FT in black;
2. ``learning_curves``: loss vs step, every rank at its best LR, full FT at its best LR;
3. ``tradeoff``: final loss vs LEXam accuracy / format rate / log-likelihood accuracy;
4. ``forgetting_curves`` and ``task_vs_retention`` (``reporting.heldout_figures``): LEXam
   accuracy and held-out SJP macro-F1 over training steps, and macro-F1 against retention;
5. ``trainable_fraction``: trainable share of the parameters per LoRA rank;
6. ``scaling`` (engineering sweeps): throughput, time to train, efficiency and GPU-hours
   against nodes per model and ZeRO stage, out-of-memory layouts marked.

Colours are colour-blind safe: ranks on viridis (ordered, so the colour reads as "more
rank"), LRs and models on the Okabe-Ito palette. Runs kept out of the analysis are
drawn as red crosses pinned to the top of the axes, never at their (misleading) loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from reporting.analysis import config_stats  # noqa: E402
from reporting.findings import Baseline, Findings, ModelFindings  # noqa: E402
from reporting.labels import lr_label, model_label  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
             "#000000"]
EXCLUDED_COLOR = "#D55E00"
FULL_COLOR = "black"
FORMATS = ("png", "svg")


def rank_colors(ranks: list[int]) -> dict[int, tuple]:
    """Viridis by log2(rank), stopping before its pale yellow end (unreadable on white)."""
    cmap = plt.get_cmap("viridis")
    logs = [math.log2(r) for r in ranks]
    lo, hi = min(logs, default=0), max(logs, default=1)
    span = hi - lo or 1.0
    return {r: cmap(0.85 * (math.log2(r) - lo) / span) for r in ranks}


def lr_colors(lrs: list[float]) -> dict[float, str]:
    return {lr: OKABE_ITO[i % len(OKABE_ITO)] for i, lr in enumerate(sorted(lrs))}


def _save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None}
                    if fmt == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _lr_axis(ax: plt.Axes, lrs: list[float]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(lrs)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([lr_label(lr) for lr in sorted(lrs)])
    ax.set_xlim(min(lrs) / 2.5, max(lrs) * 2.5)
    ax.set_xlabel("learning rate (log scale)")


def _models(runs: pd.DataFrame, findings: Findings) -> list[ModelFindings]:
    return [m for m in findings.models if (runs["model"] == m.model).any()]


def lr_sweep(runs: pd.DataFrame, findings: Findings, out_dir: Path) -> list[Path]:
    models = _models(runs, findings)
    stats = config_stats(runs)
    all_ranks = sorted(int(r) for r in runs.loc[runs["method"] == "lora", "rank"].dropna()
                       .unique())
    colors = rank_colors(all_ranks)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 1.6, 4.8),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        mine = stats[stats["model"] == m.model]
        for rank in all_ranks:
            sub = mine[(mine["method"] == "lora") & (mine["rank"] == rank)].sort_values("lr")
            if sub.empty:
                continue
            ax.errorbar(sub["lr"], sub["mean"], yerr=sub["std"].fillna(0), color=colors[rank],
                        marker="o", ms=4, lw=1.4, capsize=2)
        full = mine[mine["method"] == "full"].sort_values("lr")
        if not full.empty:
            ax.errorbar(full["lr"], full["mean"], yerr=full["std"].fillna(0), color=FULL_COLOR,
                        marker="s", ms=5, lw=2.2, ls="--", capsize=2)
        for best in (m.lora_best, m.full_best):
            if best is not None:
                ax.plot([best.lr], [best.final_loss], marker="*", ms=16, mfc="none",
                        mec="#CC79A7", mew=1.8, zorder=5)
        excluded = runs[(runs["model"] == m.model) & (runs["excluded_reason"] != "")]
        trans = ax.get_xaxis_transform()
        for i, row in enumerate(excluded.itertuples(index=False)):
            if not math.isfinite(row.lr):
                continue
            what = "full FT" if row.method == "full" else f"LoRA r{row.rank}"
            # On the top frame, off the loss scale: its position is not a loss value.
            ax.plot([row.lr], [1.0], marker="X", ms=9, color=EXCLUDED_COLOR, transform=trans,
                    clip_on=False, zorder=6)
            ax.annotate(f"{what}: {row.outcome}", (row.lr, 0.99 - 0.055 * (i + 1)),
                        xycoords=trans, ha="center", fontsize=7, color=EXCLUDED_COLOR)
        _lr_axis(ax, sorted(float(x) for x in runs.loc[runs["model"] == m.model, "lr"]
                            .dropna().unique()))
        title = model_label(m.model)
        if m.lr_ratio:
            title += f": LR ratio LoRA/full {m.lr_ratio:.3g}x"
            title += f", gap {m.gap.pct:.1f}%" if m.gap else ""
        bests = []
        if m.lora_best:
            bests.append(f"best LoRA {m.lora_best.final_loss:.3f} @ {lr_label(m.lora_best.lr)}"
                         f" (r{m.lora_best.rank})")
        if m.full_best:
            bests.append(f"best full FT {m.full_best.final_loss:.3f} @ "
                         f"{lr_label(m.full_best.lr)}")
        title += "\n" + " · ".join(bests)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("final training loss (mean of last steps)")
    handles = [Line2D([], [], color=colors[r], marker="o", ms=4, label=f"LoRA r={r}")
               for r in all_ranks]
    handles += [Line2D([], [], color=FULL_COLOR, marker="s", ls="--", lw=2.2, label="full FT"),
                Line2D([], [], marker="*", ms=12, mfc="none", mec="#CC79A7", ls="",
                       label="best per method")]
    if (runs["excluded_reason"] != "").any():
        handles.append(Line2D([], [], marker="X", color=EXCLUDED_COLOR, ls="",
                              label="diverged/failed run\n(excluded; drawn on the\ntop edge, "
                                    "not at a loss)"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Final loss vs learning rate — sweep {findings.sweep_id} (lower is better)",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "lr_sweep")


def learning_curves(runs: pd.DataFrame, history: pd.DataFrame, findings: Findings,
                    out_dir: Path, smoothing: int = 20) -> list[Path]:
    models = _models(runs, findings)
    loss = history[history["key"] == "train/loss"]
    usable = runs[runs["excluded_reason"] == ""]
    all_ranks = sorted(int(r) for r in usable.loc[usable["method"] == "lora", "rank"].dropna()
                       .unique())
    colors = rank_colors(all_ranks)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 1.8, 4.6),
                             squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        curves = []
        ri = m.rank_independence
        best_lr = {r.rank: r.best_lr for r in ri.per_rank} if ri else {}
        mine = usable[usable["model"] == m.model]
        for rank in all_ranks:
            if rank not in best_lr:
                continue
            ids = mine[(mine["rank"] == rank) & (mine["lr"] == best_lr[rank])]["run_id"]
            curves.append((colors[rank], "-", 1.3, ids))
        if m.full_best:
            ids = mine[(mine["method"] == "full") & (mine["lr"] == m.full_best.lr)]["run_id"]
            curves.append((FULL_COLOR, "--", 2.2, ids))
        tails = []
        for color, style, width, ids in curves:
            part = loss[loss["run_id"].isin(ids)]
            if part.empty:
                continue
            mean = part.groupby("step")["value"].mean()  # over seeds
            smooth = mean.rolling(smoothing, min_periods=1).mean()
            ax.plot(smooth.index, smooth.values, color=color, ls=style, lw=width)
            tails.append(smooth.iloc[int(len(smooth) * 0.15):])
        if tails:
            values = pd.concat(tails)
            low, high = float(values.min()), float(np.nanpercentile(values, 97))
            pad = 0.08 * (high - low or 0.1)
            ax.set_ylim(low - pad, high + pad)
        lora_lrs = pd.Series(list(best_lr.values())).value_counts()
        lora_text = ", ".join(f"{lr_label(lr)} for {n}/{len(best_lr)} ranks"
                              for lr, n in lora_lrs.items())
        full_text = f"full FT at {lr_label(m.full_best.lr)}" if m.full_best else "no full FT"
        ax.set_title(f"{model_label(m.model)}\nLoRA at each rank's best LR ({lora_text}); "
                     f"{full_text}", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"training loss ({smoothing}-step moving average)")
    handles = [Line2D([], [], color=colors[r], label=f"LoRA r={r}") for r in all_ranks]
    handles.append(Line2D([], [], color=FULL_COLOR, ls="--", lw=2.2,
                          label="full FT (its best LR)"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Learning curves — sweep {findings.sweep_id} (y axis zoomed on the last "
                 f"85% of training)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "learning_curves")


TRADEOFF_METRICS = (("lexam/accuracy", "LEXam accuracy (%)"),
                    ("lexam/format_rate", "answer format rate (%)"),
                    ("lexam/loglik_accuracy", "log-likelihood accuracy (%)"))


def _baseline_value(base: Baseline, key: str) -> float | None:
    return {"lexam/accuracy": base.accuracy, "lexam/format_rate": base.format_rate,
            "lexam/loglik_accuracy": base.loglik_accuracy}.get(key)


def tradeoff(runs: pd.DataFrame, findings: Findings, out_dir: Path) -> list[Path]:
    usable = runs[(runs["excluded_reason"] == "") & np.isfinite(runs["lexam/accuracy"])]
    if usable.empty:
        return []
    metrics = [(k, label) for k, label in TRADEOFF_METRICS if np.isfinite(usable[k]).any()]
    models = [m for m in _models(runs, findings) if (usable["model"] == m.model).any()]
    colors = lr_colors([float(x) for x in usable["lr"].unique()])
    markers = {"lora": "o", "full": "s"}
    fig, axes = plt.subplots(len(metrics), len(models), squeeze=False, sharex="col",
                             sharey="row",
                             figsize=(4.8 * len(models) + 1.8, 3.0 * len(metrics) + 0.6))
    for col, m in enumerate(models):
        mine = usable[usable["model"] == m.model]
        for row, (key, label) in enumerate(metrics):
            ax = axes[row][col]
            for (method, lr), sub in mine.groupby(["method", "lr"]):
                ax.scatter(sub["final_loss"], 100 * sub[key], color=colors[float(lr)],
                           marker=markers.get(method, "^"), s=30 if method == "lora" else 55,
                           edgecolor="black" if method == "full" else "none", lw=0.8,
                           alpha=0.9, zorder=3)
            base = m.baseline
            base_value = _baseline_value(base, key) if base else None
            if base_value is not None:
                ax.axhline(100 * base_value, color="#555555", ls="--", lw=1.2)
                ax.annotate(f"base model {100 * base_value:.1f}%", (0.01, 100 * base_value),
                            xycoords=("axes fraction", "data"), ha="left", va="bottom",
                            fontsize=7, color="#555555")
            if key != "lexam/format_rate" and base and base.chance is not None:
                ax.axhline(100 * base.chance, color="#999999", ls=":", lw=1.2)
                ax.annotate(f"chance {100 * base.chance:.0f}%", (0.01, 100 * base.chance),
                            xycoords=("axes fraction", "data"), ha="left", va="top",
                            fontsize=7, color="#777777")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
            else:
                ax.tick_params(labelleft=True)
            if row == 0:
                ax.set_title(model_label(m.model), fontsize=10)
            if row == len(metrics) - 1:
                ax.set_xlabel("final training loss (lower = better fit to SJP)")
    for row, (key, _) in enumerate(metrics):
        values = [100 * usable[key].max()]
        values += [100 * v for m in models if m.baseline
                   for v in [_baseline_value(m.baseline, key)] if v is not None]
        top = 103.0 if key == "lexam/format_rate" else max(values) * 1.08 + 1
        axes[row][0].set_ylim(-3, top)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f"LR {lr_label(lr)}")
               for lr, c in colors.items()]
    handles += [Line2D([], [], marker="o", ls="", color="grey", label="LoRA (any rank)"),
                Line2D([], [], marker="s", ls="", color="grey", mec="black", label="full FT"),
                Line2D([], [], color="#555555", ls="--", label="base model"),
                Line2D([], [], color="#999999", ls=":", label="chance")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Task loss vs retained LEXam ability — sweep {findings.sweep_id}",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "tradeoff")


def trainable_fraction(findings: Findings, out_dir: Path) -> list[Path]:
    rows = [(m.model, r.rank, r.trainable_fraction if r.trainable_fraction is not None
             else r.expected_fraction) for m in findings.models for r in m.trainable]
    rows = [r for r in rows if r[2]]
    if not rows:
        return []
    frame = pd.DataFrame(rows, columns=["model", "rank", "fraction"])
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for i, (model, sub) in enumerate(frame.groupby("model", sort=False)):
        ax.plot(sub["rank"], 100 * sub["fraction"], marker="o", color=OKABE_ITO[i],
                label=model_label(model))
        for rank, frac in zip(sub["rank"], sub["fraction"], strict=True):
            if rank in (sub["rank"].min(), sub["rank"].max(), 32, 64):
                ax.annotate(f"{100 * frac:.3g}%", (rank, 100 * frac), textcoords="offset points",
                            xytext=(6, -11) if i or rank == sub["rank"].min() else (-6, 6),
                            ha="left" if i or rank == sub["rank"].min() else "right",
                            fontsize=7, color=OKABE_ITO[i])
    ax.axhline(1.0, color="#555555", ls="--", lw=1.2)
    ax.annotate("1% of the parameters", (0.01, 1.0), xycoords=("axes fraction", "data"),
                va="bottom", fontsize=8, color="#555555")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ranks = sorted(frame["rank"].unique())
    ax.xaxis.set_major_locator(FixedLocator(ranks))
    ax.set_xticklabels([str(r) for r in ranks])
    ax.set_xlabel("LoRA rank")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_ylabel("trainable parameters (% of base model, log scale)")
    ax.set_title(f"Trainable share per LoRA rank — sweep {findings.sweep_id}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, "trainable_fraction")


def draw_all(runs: pd.DataFrame, history: pd.DataFrame, findings: Findings, out_dir: Path,
             smoothing: int = 20) -> dict[str, list[Path]]:
    """Every figure that the data allows, by name."""
    from reporting.heldout_figures import forgetting_curves, task_vs_retention

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "lr_sweep": lr_sweep(runs, findings, out_dir),
        "learning_curves": learning_curves(runs, history, findings, out_dir, smoothing),
        "tradeoff": tradeoff(runs, findings, out_dir),
        "forgetting_curves": forgetting_curves(findings, out_dir),
        "task_vs_retention": task_vs_retention(findings, out_dir),
        "trainable_fraction": trainable_fraction(findings, out_dir),
        "scaling": scaling(findings, out_dir),
    }
    return {name: paths for name, paths in figures.items() if paths}


def scaling(findings: Findings, out_dir: Path) -> list[Path]:
    """Per model: throughput, time to train, scaling efficiency and GPU-hours against
    nodes, one line per ZeRO stage; layouts that ran out of memory are red crosses on
    the bottom edge (they have no throughput), never a point on the scale."""
    sc = findings.scaling
    if sc is None or not sc.points:
        return []
    models = sorted({p.model for p in sc.points},
                    key=lambda m: next((x.total_params or 0 for x in findings.models
                                        if x.model == m), 0))
    panels = (("samples_per_second", "throughput (samples/s, log)"),
              ("time_to_train_s", "time to train (h, log)"),
              ("efficiency", "scaling efficiency (%)"),
              ("gpu_hours", "GPU-hours per run"))
    fig, axes = plt.subplots(len(models), len(panels), figsize=(4.2 * len(panels),
                                                                3.4 * len(models)),
                             squeeze=False)
    stages = sorted({p.zero_stage for p in sc.points}, key=lambda z: -1 if z is None else z)
    colors = {z: OKABE_ITO[i % len(OKABE_ITO)] for i, z in enumerate(stages)}
    all_nodes = sorted({p.nodes for p in sc.points})
    for row, model in enumerate(models):
        mine = [p for p in sc.points if p.model == model]
        for col, (field, label) in enumerate(panels):
            ax = axes[row][col]
            for zero in stages:
                pts = [p for p in mine if p.zero_stage == zero and p.outcome == "finished"]
                xs = [p.nodes for p in pts]
                ys = [getattr(p, field) for p in pts]
                if field == "time_to_train_s":
                    ys = [y / 3600 if y is not None else None for y in ys]
                if field == "efficiency":
                    ys = [100 * y if y is not None else None for y in ys]
                name = "no DeepSpeed" if zero is None else f"ZeRO-{zero}"
                if pts:
                    ax.plot(xs, ys, "o-", color=colors[zero], label=name)
                if field == "samples_per_second" and pts:
                    base = pts[0]
                    ax.plot(xs, [base.samples_per_second * x / base.nodes for x in xs], ":",
                            color=colors[zero], alpha=0.7,
                            label=f"{name} linear from {base.nodes} node(s)")
                ooms = [p.nodes for p in mine if p.zero_stage == zero and p.outcome == "oom"]
                if ooms:
                    offset = {z: i for i, z in enumerate(stages)}[zero] * 0.04
                    ax.scatter(ooms, [0.03 + offset] * len(ooms), marker="x", s=60,
                               color=EXCLUDED_COLOR, transform=ax.get_xaxis_transform(),
                               clip_on=False, zorder=5)
                    for x in ooms:
                        ax.annotate(f"OOM {name}", (x, 0.03 + offset),
                                    xycoords=("data", "axes fraction"), fontsize=6,
                                    xytext=(5, -2), textcoords="offset points",
                                    color=EXCLUDED_COLOR)
                planned = [p.nodes for p in mine if p.zero_stage == zero and p.predicted_oom]
                if planned:  # the plan's prediction, just above the observed crosses
                    offset = {z: i for i, z in enumerate(stages)}[zero] * 0.04
                    ax.scatter(planned, [0.08 + offset] * len(planned), marker="s", s=28,
                               facecolors="none", edgecolors=colors[zero],
                               transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(all_nodes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(n) for n in all_nodes])
            ax.set_xlim(min(all_nodes) / 1.4, max(all_nodes) * 1.4)
            ax.set_xlabel("nodes (log 2)")
            if field in ("samples_per_second", "time_to_train_s"):
                ax.set_yscale("log")
                ax.margins(y=0.35)  # room below the data for the OOM crosses
            if field == "efficiency":
                ax.set_ylim(0, 110)
                ax.axhline(100, color="grey", lw=0.8, ls="--")
            if field == "gpu_hours":
                ax.set_ylim(bottom=0, top=max([p.gpu_hours or 0 for p in mine] + [0]) * 1.15
                            or None)
            ax.set_ylabel(label)
            ax.set_title(f"{model_label(model)}: {label.split(' (')[0]}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
        axes[row][0].legend(fontsize=7, loc="upper left")
    oom_handle = Line2D([], [], marker="x", color=EXCLUDED_COLOR, ls="", label="out of memory")
    plan_handle = Line2D([], [], marker="s", markerfacecolor="none", color="grey", ls="",
                         label="predicted OOM (memory plan)")
    fig.legend(handles=[oom_handle, plan_handle], loc="lower right", fontsize=8)
    fig.suptitle(f"Scaling with nodes per ZeRO stage — sweep {findings.sweep_id}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, "scaling")
