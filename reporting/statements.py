"""Each finding stated in one sentence with its numbers (report.md, report.html and
findings.json share these sentences, so the three never disagree)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reporting.findings import (
    Candidate,
    Findings,
    ModelFindings,
    Optimum,
    Recommendation,
    Statement,
    TrainableRow,
)
from reporting.labels import lr_label

QUESTIONS = {
    "1": "Optimal LR ratio LoRA / full FT",
    "2": "Is LoRA's optimal LR rank-independent?",
    "3": "Gap between LoRA and full FT",
    "4": "Effect of model size",
    "5": "Trade-off: task loss vs retained LEXam accuracy",
    "sjp": "Held-out SJP: does a lower training loss mean better judgments?",
    "forgetting": "When does the forgetting start?",
    "recommend": "The recommended recipe",
    "params": "Trainable parameters per rank",
    "runs": "Runs kept out of the analysis",
    "noise": "Seeds and noise",
    "scaling": "Engineering: scaling, memory and cost",
}


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}x" if value >= 1 else f"1/{1 / value:.3g}x"


def _config(best: Optimum) -> str:
    rank = f"rank {best.rank}, " if best.rank is not None else ""
    spread = f" ± {best.std:.3f} over {best.n_seeds} seeds" if best.std is not None else ""
    return f"LR {lr_label(best.lr)} ({rank}final loss {best.final_loss:.3f}{spread})"


def _noise(flag: bool | None, what: str) -> str:
    if flag is None:
        return ""
    return f" The {what} is within seed noise." if flag else f" The {what} is beyond seed noise."


def _model_statements(m: ModelFindings) -> list[Statement]:
    out: list[Statement] = []

    def add(key: str, text: str) -> None:
        out.append(Statement(id=f"{m.model}:{key}", question=QUESTIONS[key], model=m.model,
                             text=text))

    lora, full = m.lora_best, m.full_best
    if lora and full:
        runner = _noise(lora.within_noise_of_runner_up, "LoRA optimum's lead over other LRs")
        add("1", f"{m.model}: LoRA's best is {_config(lora)}, full FT's is {_config(full)}: "
                 f"the optimal LR ratio LoRA / full FT is {ratio(m.lr_ratio)}.{runner}")
    elif lora or full:
        add("1", f"{m.model}: only one method has usable runs; no LR ratio.")

    ri = m.rank_independence
    if ri and ri.common_lr is not None:
        verdict = {True: "rank-independent", False: "rank-dependent",
                   None: "a single rank: not testable"}[ri.rank_independent]
        odd = [f"rank {r.rank}: {lr_label(r.best_lr)}" for r in ri.per_rank
               if not r.consistent_with_common_lr]
        common = lr_label(ri.common_lr)
        text = (f"{m.model}: LoRA's best LR is {common} for {ri.ranks_at_common_lr} of "
                f"{ri.ranks} ranks ({verdict})")
        text += f"; exceptions: {', '.join(odd)}." if odd else "."
        if ri.high_rank_spread is not None:
            text += (f" At LR {common}, final losses of ranks >= {ri.high_rank_min} "
                     f"({', '.join(map(str, ri.high_ranks))}) span {ri.high_rank_spread:.3f} "
                     f"({ri.high_rank_spread_pct:.1f}% of the lowest).")
        add("2", text)

    if m.gap:
        g = m.gap
        text = (f"{m.model}: LoRA's best final loss is {g.pct:.1f}% above full FT's "
                f"(({g.lora_loss:.3f} - {g.full_loss:.3f}) / {g.lora_loss:.3f}; "
                f"{g.pct_of_full:.1f}% of full FT's loss).")
        text += _noise(g.within_noise, "gap")
        acc_l, acc_f = m.lexam_at_best.get("lora"), m.lexam_at_best.get("full")
        if acc_l is not None or acc_f is not None:
            base = f", base model {pct(m.baseline.accuracy)}" if m.baseline else ""
            text += (f" LEXam accuracy at these optima: LoRA {pct(acc_l)}, full FT "
                     f"{pct(acc_f)}{base}.")
        add("3", text)

    if m.tradeoff:
        parts = []
        for row in sorted(m.tradeoff, key=lambda r: (r.method, r.lr)):
            span = (pct(row.accuracy) if row.accuracy_min == row.accuracy_max else
                    f"{pct(row.accuracy_min)}-{pct(row.accuracy_max)}")
            parts.append(f"{'LoRA' if row.method == 'lora' else 'full FT'} LR {lr_label(row.lr)}: "
                         f"loss {loss(row.final_loss)}, accuracy {span}, "
                         f"format rate {pct(row.format_rate, 0)}")
        base = (f" Base model: {pct(m.baseline.accuracy)} (format rate "
                f"{pct(m.baseline.format_rate, 0)})." if m.baseline else "")
        add("5", f"{m.model}: {'; '.join(parts)}.{base}")

    if m.trainable:
        under = [r.rank for r in m.trainable if r.under_1pct]
        over = [r for r in m.trainable if r.under_1pct is False]
        shown = [r for r in m.trainable if (r.trainable_fraction or r.expected_fraction)]
        if shown:
            def frac(r: TrainableRow) -> float | None:
                return r.trainable_fraction if r.trainable_fraction is not None \
                    else r.expected_fraction
            text = f"{m.model}: "
            if under:
                last = max(under)
                row = next(r for r in m.trainable if r.rank == last)
                text += f"LoRA trains under 1% of the parameters up to rank {last} " \
                        f"({pct(frac(row), 2)})"
            else:
                text += "no LoRA rank trains under 1% of the parameters"
            if over:
                text += f"; rank {over[0].rank} trains {pct(frac(over[0]), 2)}, rank " \
                        f"{over[-1].rank} {pct(frac(over[-1]), 2)}"
            mismatch = [r.rank for r in m.trainable if r.matches_preset is False]
            if mismatch:
                text += (f". Logged counts differ from the preset's by more than 2% at ranks "
                         f"{', '.join(map(str, mismatch))}")
            add("params", text + ".")

    for key, text in heldout_statements(m):
        add(key, text)

    if m.excluded:
        names = "; ".join(f"{e.run_name} ({e.reason})" for e in m.excluded)
        add("runs", f"{m.model}: {len(m.excluded)} of {m.n_runs} runs are shown but kept out "
                    f"of the optima: {names}.")
    return out


def points(value: float | None) -> str:
    """An accuracy difference (fraction) in percentage points."""
    return "n/a" if value is None else f"{100 * value:+.1f} points"


def metric_name(metric: str) -> str:
    return {"accuracy": "accuracy", "loglik_accuracy": "log-likelihood accuracy"}.get(
        metric, metric)


def method_name(method: str) -> str:
    return "LoRA" if method == "lora" else "full FT"


def recipe(c: Candidate, last_step: int | None = None) -> str:
    rank = f" rank {c.rank}," if c.rank is not None else ","
    where = "final model" if c.final else "checkpoint"
    of = f" of {last_step}" if last_step and not c.final else ""
    return f"{method_name(c.method)}{rank} LR {lr_label(c.lr)}, step {c.step}{of} ({where})"


def _spread(value: float, std: float | None, n: int, digits: int = 3) -> str:
    if n > 1 and std is not None:
        return f"{value:.{digits}f} ± {std:.{digits}f} over {n} seeds"
    return f"{value:.{digits}f}, single seed"


def _recommendation_text(m: ModelFindings, r: Recommendation) -> str:
    margin = f"{100 * r.margin:g} points"
    if r.best is None:
        return f"{m.model}: no recommendation: {r.reason}."
    b = r.best
    last = max((p.step for c in (m.heldout.curves if m.heldout else []) for p in c.points
                if p.final and c.method == b.method and c.lr == b.lr and c.rank == b.rank),
               default=None)
    text = (f"{m.model}: recommended recipe: {recipe(b, last)}: held-out SJP macro-F1 "
            f"{_spread(b.sjp_macro_f1, b.sjp_macro_f1_std, b.n_seeds)}, LEXam "
            f"{metric_name(r.metric)} "
            f"{pct(b.lexam_accuracy)} (base model {pct(r.base_accuracy)}, {points(b.retention)}; "
            f"margin {margin}); {r.n_within_margin} of {r.n_candidates} recipes keep LEXam "
            "within the margin.")
    majority = m.heldout.sjp_baseline.majority_macro_f1 if m.heldout and m.heldout.sjp_baseline \
        else None
    if majority is not None:
        text += (f" Its macro-F1 is above the majority-class baseline's {majority:.3f}."
                 if b.sjp_macro_f1 > majority else
                 f" Its macro-F1 is not above the majority-class baseline's {majority:.3f}: "
                 "it predicts no better than always answering the commoner outcome.")
    if r.runner_up:
        u = r.runner_up
        noise = {True: " (within seed noise of the best)",
                 False: " (the best leads beyond seed noise)",
                 None: ""}[r.within_noise_of_runner_up]
        text += (f" Runner-up: {recipe(u)}: macro-F1 {u.sjp_macro_f1:.3f}, LEXam "
                 f"{pct(u.lexam_accuracy)}{noise}.")
    if r.single_seed:
        text += " Single seed: no spread, and no lead is tested against seed noise."
    if r.registry:
        text += (f" Registry: {r.registry.name} version {r.registry.version} carries the "
                 f"alias '{r.registry.alias}'.")
    elif r.registry_note:
        text += f" Registry: {r.registry_note}."
    return text


def heldout_statements(m: ModelFindings) -> list[tuple[str, str]]:
    """(question key, sentence) for held-out SJP, forgetting and the recommendation."""
    h = m.heldout
    if h is None:
        return []
    out: list[tuple[str, str]] = []
    parts = []
    sb = h.sjp_baseline
    if sb and sb.macro_f1 is not None:
        parts.append(f"held-out SJP ({sb.n_cases} cases): base model macro-F1 "
                     f"{sb.macro_f1:.3f} (accuracy {pct(sb.accuracy)}), majority-class "
                     f"baseline macro-F1 {loss(sb.majority_macro_f1)} (accuracy "
                     f"{pct(sb.majority_accuracy)})")
    lo = h.loss_order
    if lo and lo.spearman is not None:
        verdict = ("the orders match" if lo.agrees else "the orders do not match")
        parts.append(
            f"training-loss order vs held-out macro-F1 order across {lo.n_runs} runs: "
            f"Spearman rho {lo.spearman:+.2f} (pairs ordered alike: {pct(lo.pair_agreement, 0)})"
            f": {verdict}; the lowest training loss ({lo.lowest_loss_run}, "
            f"{loss(lo.lowest_loss)}) has macro-F1 {loss(lo.lowest_loss_macro_f1)}, the best "
            f"macro-F1 {loss(lo.best_macro_f1)} is {lo.best_macro_f1_run} (loss "
            f"{loss(lo.best_macro_f1_loss)})")
    elif lo:
        parts.append(f"only {lo.n_runs} run(s) with held-out scores: too few to compare orders")
    if parts:
        out.append(("sjp", f"{m.model}: " + "; ".join(parts) + "."))
    drops = sorted(h.retention, key=lambda d: (d.method, d.lr))
    if drops:
        texts = []
        for d in drops:
            head = f"{method_name(d.method)} LR {lr_label(d.lr)}"
            if d.first_step is not None:
                texts.append(
                    f"{head}: from step {d.first_step} (accuracy {pct(d.accuracy)}, "
                    f"{points(d.delta)}, 95% interval {points(d.delta_low)} to "
                    f"{points(d.delta_high)}; {d.runs_dropped} of {d.runs} runs)")
            else:
                texts.append(f"{head}: never within steps {d.steps[0]}-{d.steps[-1]} "
                             f"({points(d.delta)} at step {d.steps[-1]})")
        first = [d for d in drops if d.first_step is not None]
        lead = ""
        if first:
            earliest = min(first, key=lambda d: (d.first_step, -d.lr))
            lead = (f" Earliest: {method_name(earliest.method)} at LR {lr_label(earliest.lr)}, "
                    f"step {earliest.first_step}.")
        noise = ("bootstrap over questions" if all(d.noise == "bootstrap" for d in drops)
                 else "bootstrap over questions where logged, else a normal approximation")
        out.append(("forgetting", f"{m.model}: LEXam {metric_name(h.metric)} first drops below "
                                  f"the base model beyond noise ({noise}) at "
                                  + "; ".join(texts) + "." + lead))
    if h.recommendation:
        out.append(("recommend", _recommendation_text(m, h.recommendation)))
    return out


def _size_statement(f: Findings) -> Statement | None:
    s = f.size_effect
    if s is None:
        return None

    def series(values: list, fmt: Callable[[Any], str]) -> str:
        return " -> ".join(fmt(v) for v in values)
    verdict = {True: "The gap shrinks as the model grows.",
               False: "The gap does not shrink monotonically with size.",
               None: ""}[s.gap_shrinks_with_size]
    text = (f"From {' to '.join(s.models)}: LoRA vs full FT gap "
            f"{series(s.gap_pct, lambda v: 'n/a' if v is None else f'{v:.1f}%')}, "
            f"LR ratio {series(s.lr_ratio, ratio)}, best LoRA loss "
            f"{series(s.lora_best_loss, loss)}, best full FT loss "
            f"{series(s.full_best_loss, loss)}. {verdict}").strip()
    return Statement(id="size", question=QUESTIONS["4"], model=None, text=text)


def _noise_statement(f: Findings) -> Statement:
    seeds = max((m.max_seeds for m in f.models), default=0)
    if seeds <= 1:
        text = ("Single seed per configuration: no difference can be checked against seed "
                "noise; treat small differences (for example between ranks) with care.")
    else:
        text = (f"Up to {seeds} seeds per configuration; a difference is called within noise "
                f"when it is at most 2 combined standard errors.")
    return Statement(id="noise", question=QUESTIONS["noise"], model=None, text=text)


def statements(f: Findings) -> list[Statement]:
    out = [s for m in f.models for s in _model_statements(m)]
    size = _size_statement(f)
    if size:
        out.append(size)
    out.append(_noise_statement(f))
    order = list(QUESTIONS.values())
    return sorted(out, key=lambda s: order.index(s.question))
