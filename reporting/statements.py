"""Each finding stated in one sentence with its numbers (report.md, report.html and
findings.json share these sentences, so the three never disagree)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reporting.findings import Findings, ModelFindings, Optimum, Statement, TrainableRow
from reporting.labels import lr_label

QUESTIONS = {
    "1": "Optimal LR ratio LoRA / full FT",
    "2": "Is LoRA's optimal LR rank-independent?",
    "3": "Gap between LoRA and full FT",
    "4": "Effect of model size",
    "5": "Trade-off: task loss vs retained LEXam accuracy",
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

    if m.excluded:
        names = "; ".join(f"{e.run_name} ({e.reason})" for e in m.excluded)
        add("runs", f"{m.model}: {len(m.excluded)} of {m.n_runs} runs are shown but kept out "
                    f"of the optima: {names}.")
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
