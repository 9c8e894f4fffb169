"""report.md, a self-contained report.html (figures embedded) and findings.json.

The Markdown is written first and the HTML is rendered from it (markdown-it-py, raw
HTML disabled so run names and tags from MLflow cannot inject markup), so the two
always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from markdown_it import MarkdownIt

from reporting.findings import Findings, ModelFindings
from reporting.labels import lr_label, model_label
from reporting.statements import QUESTIONS, loss, pct, ratio

CAPTIONS = {
    "lr_sweep": "Final training loss against learning rate, one line per LoRA rank (viridis: "
                "darker = lower rank), full fine-tuning dashed black; stars mark each method's "
                "best; red crosses pinned to the top are runs that diverged or failed and are "
                "kept out of the optima.",
    "learning_curves": "Training loss against optimizer step (moving average) for every LoRA "
                       "rank at its best learning rate, and full fine-tuning at its best; the "
                       "y axis is zoomed on the last 85% of training.",
    "tradeoff": "Each run's final training loss against its LEXam accuracy, answer format rate "
                "and log-likelihood accuracy, coloured by learning rate; dashed: the untouched "
                "base model, dotted: chance.",
    "forgetting_curves": "LEXam accuracy (top) and held-out SJP macro-F1 (bottom) at every "
                         "evaluated checkpoint and the final model, one column per learning "
                         "rate, one line per LoRA rank (full FT dashed black); each line starts "
                         "at step 0 from the untouched base model (dashed level); dotted: "
                         "chance and the majority class; red dotted: where retention first "
                         "drops beyond the bootstrap noise; bands: spread over seeds.",
    "task_vs_retention": "Each run's final model: held-out SJP macro-F1 against LEXam retention "
                         "(accuracy minus the base model's, points); ringed and joined: the "
                         "Pareto front; shaded: within the recommendation's margin; star: the "
                         "recommended recipe; diamond: the untouched base model.",
    "trainable_fraction": "Trainable parameters per LoRA rank as logged by the training runs "
                          "(% of the base model, log scales); dashed: 1%.",
    "scaling": "Per model (rows): throughput (dotted: linear scaling from the smallest "
               "working layout), time to train, scaling efficiency and GPU-hours per run "
               "against nodes, one colour per ZeRO stage; red crosses on the bottom edge are "
               "layouts that ran out of memory (no throughput to draw).",
}
FIGURE_TITLES = {"lr_sweep": "Learning-rate sweep", "learning_curves": "Learning curves",
                 "tradeoff": "Knowledge-retention trade-off",
                 "forgetting_curves": "Forgetting over training",
                 "task_vs_retention": "Task skill vs retention",
                 "trainable_fraction": "Trainable parameters per rank",
                 "scaling": "Scaling with nodes and ZeRO stage"}
CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def cell(value: object) -> str:
    """A Markdown table cell: pipes and newlines would break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _summary_table(findings: Findings) -> list[str]:
    lines = ["| model | LoRA best LR (rank) | LoRA best loss | full FT best LR | "
             "full FT best loss | LR ratio LoRA/full | gap | LEXam base | LEXam LoRA | "
             "LEXam full FT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in findings.models:
        lo, fu = m.lora_best, m.full_best
        lines.append("| " + " | ".join(cell(v) for v in [
            model_label(m.model),
            f"{lr_label(lo.lr)} (r{lo.rank})" if lo else "n/a", loss(lo.final_loss if lo else None),
            lr_label(fu.lr) if fu else "n/a", loss(fu.final_loss if fu else None),
            ratio(m.lr_ratio), f"{m.gap.pct:.1f}%" if m.gap else "n/a",
            pct(m.baseline.accuracy) if m.baseline else "n/a",
            pct(m.lexam_at_best.get("lora")), pct(m.lexam_at_best.get("full")),
        ]) + " |")
    return lines


def _rank_table(m: ModelFindings) -> list[str]:
    ri = m.rank_independence
    if not ri:
        return []
    lrs = sorted({lr for r in ri.per_rank for lr in r.losses_by_lr}, key=float)
    lines = [f"**{model_label(m.model)}**", "",
             "| rank | best LR | final loss | " + " | ".join(f"loss @ {lr_label(float(x))}"
                                                        for x in lrs) + " | LR ratio to full FT |",
             "|---" * (4 + len(lrs)) + "|"]
    for r in ri.per_rank:
        spread = f" ± {r.std:.3f}" if r.std is not None else ""
        lines.append("| " + " | ".join([
            str(r.rank), lr_label(r.best_lr), f"{r.final_loss:.3f}{spread}",
            *[loss(r.losses_by_lr.get(x)) for x in lrs], ratio(r.lr_ratio_to_full)]) + " |")
    return [*lines, ""]


def _tradeoff_table(m: ModelFindings) -> list[str]:
    if not m.tradeoff:
        return []
    lines = [f"**{model_label(m.model)}**"
             + (f" (base model: accuracy {pct(m.baseline.accuracy)}, format rate "
                f"{pct(m.baseline.format_rate)}, log-likelihood accuracy "
                f"{pct(m.baseline.loglik_accuracy)})" if m.baseline else ""), "",
             "| method | LR | runs | mean final loss | LEXam accuracy (min-max) | "
             "format rate | log-likelihood accuracy |", "|---|---|---|---|---|---|---|"]
    for t in sorted(m.tradeoff, key=lambda t: (t.method, t.lr)):
        lines.append("| " + " | ".join([
            "LoRA" if t.method == "lora" else "full FT", lr_label(t.lr), str(t.n_runs),
            loss(t.final_loss), f"{pct(t.accuracy)} ({pct(t.accuracy_min)}-{pct(t.accuracy_max)})",
            pct(t.format_rate), pct(t.loglik_accuracy)]) + " |")
    return [*lines, ""]


def _excluded_table(findings: Findings) -> list[str]:
    rows = [(m, e) for m in findings.models for e in m.excluded]
    if not rows:
        return ["No run was kept out: every run finished with a finite final loss.", ""]
    lines = ["| run | model | method | rank | LR | outcome | reason |",
             "|---|---|---|---|---|---|---|"]
    for m, e in rows:
        lines.append("| " + " | ".join(cell(v) for v in [
            e.run_name, m.model, e.method, e.rank if e.rank is not None else "",
            lr_label(e.lr) if e.lr else "", e.outcome, e.reason]) + " |")
    return [*lines, ""]


def _not_finished_section(findings: Findings) -> list[str]:
    rows = findings.not_finished
    lines = ["## Runs that did not finish", ""]
    if not rows:
        return [*lines, f"All {findings.n_runs} runs finished.", ""]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    lines += [f"{len(rows)} of {findings.n_runs} runs did not finish ("
              + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
              + "); they are kept out of the optima.", "",
              "| run | model | method | rank | LR | outcome | job state | job id | reason |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(v) for v in [
            r.run_name, r.model, r.method, r.rank if r.rank is not None else "",
            lr_label(r.lr) if r.lr else "", r.outcome.upper() if r.outcome == "oom"
            else r.outcome, r.job_state, r.job_id, r.reason[:300]]) + " |")
    return [*lines, ""]


METRIC_LABELS = {"accuracy": "accuracy", "loglik_accuracy": "log-lik. accuracy"}


def _f1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _recommendation_section(findings: Findings) -> list[str]:
    """The recommended recipe per model, its numbers and the runner-up."""
    rows = [(m, m.heldout.recommendation) for m in findings.models
            if m.heldout and m.heldout.recommendation]
    if not rows:
        return []
    metric = METRIC_LABELS.get(rows[0][1].metric, rows[0][1].metric)
    lines = ["## Recommended recipe", "",
             "| model | | method | rank | LR | step | SJP macro-F1 | SJP accuracy | "
             f"LEXam {metric} | vs base | seeds | registry |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows:
        for label, c in (("recommended", r.best), ("runner-up", r.runner_up)):
            if c is None:
                continue
            registry = ""
            if label == "recommended" and r.registry:
                registry = f"{r.registry.name} v{r.registry.version} @{r.registry.alias}"
            spread = f" ± {c.sjp_macro_f1_std:.3f}" if c.sjp_macro_f1_std is not None else ""
            lines.append("| " + " | ".join(cell(v) for v in [
                model_label(m.model), label, "LoRA" if c.method == "lora" else "full FT",
                c.rank if c.rank is not None else "", lr_label(c.lr),
                f"{c.step}{'' if c.final else ' (checkpoint)'}",
                f"{c.sjp_macro_f1:.3f}{spread}", pct(c.sjp_accuracy), pct(c.lexam_accuracy),
                pct(c.retention) if c.retention is None else f"{100 * c.retention:+.1f} pt",
                c.n_seeds, registry]) + " |")
    lines.append("")
    for m, r in rows:
        lines.append(f"- {cell(model_label(m.model))}: rule: {r.rule}"
                     + (f"; {r.reason}" if r.reason else "")
                     + (f"; {r.registry_note}" if r.registry_note else "") + ".")
    return [*lines, ""]


def _heldout_section(findings: Findings) -> list[str]:
    models = [m for m in findings.models if m.heldout]
    if not models:
        return []
    lines = ["## Held-out SJP and forgetting over training", ""]
    for m in models:
        h = m.heldout
        assert h is not None
        sb = h.sjp_baseline
        base = (f" (base model macro-F1 {_f1(sb.macro_f1)}, majority class "
                f"{_f1(sb.majority_macro_f1)}, {sb.n_cases} held-out cases)" if sb else "")
        metric = METRIC_LABELS.get(h.metric, h.metric)
        lines += [f"**{model_label(m.model)}**{base}", "",
                  f"| method | rank | LR | step | LEXam {metric} | vs base | SJP macro-F1 | "
                  "validation loss | seeds |", "|---|---|---|---|---|---|---|---|---|"]
        for c in sorted(h.curves, key=lambda c: (c.method, c.lr, c.rank or 0)):
            for p in c.points:
                lines.append("| " + " | ".join(cell(v) for v in [
                    "LoRA" if c.method == "lora" else "full FT",
                    c.rank if c.rank is not None else "", lr_label(c.lr),
                    f"{p.step}{' (final)' if p.final else ''}", pct(p.lexam_accuracy),
                    "n/a" if p.accuracy_delta is None else f"{100 * p.accuracy_delta:+.1f} pt",
                    _f1(p.sjp_macro_f1), loss(p.eval_loss), p.n_seeds]) + " |")
        lines.append("")
    return lines


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value)


def _plan_cell(p) -> str:
    """``210 > 96: OOM`` / ``77 <= 96``: the memory plan beside the observed outcome."""
    if p.predicted_gb is None:
        return ""
    if p.gpu_memory_gb is None:
        return f"{p.predicted_gb:.0f}"
    if p.predicted_oom:
        return f"{p.predicted_gb:.0f} > {p.gpu_memory_gb:g}: OOM"
    return f"{p.predicted_gb:.0f} <= {p.gpu_memory_gb:g}"


def _scaling_section(findings: Findings) -> list[str]:
    sc = findings.scaling
    if sc is None:
        return []
    lines = ["## Scaling, memory and cost", "",
             "| model | method | ZeRO | nodes x GPUs | outcome | memory plan (GB/GPU) | "
             "samples/s | tokens/s | time to train (h) | first step (s) | speedup | "
             "efficiency | GPU-h/run | final loss | LEXam |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sc.points:
        gpus = "" if p.gpus_per_node is None else f" x {p.gpus_per_node}"
        gpu_h = _num(p.gpu_hours) + (" (logged)" if p.gpu_hours_source == "logged" else "")
        lines.append("| " + " | ".join(cell(v) for v in [
            p.model, p.method, "" if p.zero_stage is None else p.zero_stage,
            f"{p.nodes}{gpus}", p.outcome.upper() if p.outcome == "oom" else p.outcome,
            _plan_cell(p), _num(p.samples_per_second), _num(p.tokens_per_second, "{:.0f}"),
            _num(None if p.time_to_train_s is None else p.time_to_train_s / 3600),
            _num(p.time_to_first_step_s, "{:.0f}"), _num(p.speedup),
            _num(None if p.efficiency is None else 100 * p.efficiency, "{:.0f}%"),
            gpu_h, loss(p.final_loss), pct(p.lexam_accuracy)]) + " |")
    predicted = [p for p in sc.points if p.predicted_oom]
    lines += ["", "Out of memory: " + ("; ".join(
        f"{p.model} ZeRO-{p.zero_stage} on {p.nodes} node(s)" for p in sc.oom) or "none") + ".",
        "", "Predicted out of memory by the plan before submitting: " + ("; ".join(
            f"{p.model} ZeRO-{p.zero_stage} on {p.nodes} node(s)" for p in predicted)
            or "none") + ".",
        "", "Cheapest layout that fits, per model: " + ("; ".join(
            f"{m}: {p.nodes} node(s) x {p.gpus_per_node} GPUs, ZeRO-{p.zero_stage}, "
            f"{p.gpu_hours:.2f} GPU-h per run" for m, p in sc.cheapest.items()) or "none")
        + ".", "", f"Definitions: {sc.definition}.", ""]
    return lines


def markdown(findings: Findings, figures: dict[str, list[Path]]) -> str:
    lines = [f"# LoRA vs full fine-tuning: sweep `{findings.sweep_id}`", "",
             f"Regenerated from MLflow at {findings.generated_at} from {findings.n_runs} "
             f"training runs ({', '.join(model_label(m.model) for m in findings.models)}).", "",
             "## Summary", "", *_summary_table(findings), "",
             "Gap = (best LoRA loss - best full FT loss) / best LoRA loss. LEXam columns: "
             "accuracy of the untouched base model and of the runs at each method's "
             "lowest-loss configuration.", "", *_not_finished_section(findings),
             *_recommendation_section(findings),
             "## Findings", ""]
    for question in QUESTIONS.values():
        said = [s for s in findings.statements if s.question == question]
        if said:
            lines += [f"### {question}", "", *[f"- {cell(s.text)}" for s in said], ""]
    lines += ["## Figures", ""]
    for name, paths in figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        svg = next((p for p in paths if p.suffix == ".svg"), None)
        lines += [f"### {FIGURE_TITLES.get(name, name)}", "",
                  f"![{FIGURE_TITLES.get(name, name)}]({png.name})", "",
                  CAPTIONS.get(name, "") + (f" Vector version: `{svg.name}`." if svg else ""), ""]
    lines += ["## Best learning rate per LoRA rank", ""]
    for m in findings.models:
        lines += _rank_table(m)
    lines += ["## LEXam after fine-tuning, per learning rate", ""]
    if not any(m.tradeoff for m in findings.models):
        lines += ["No LEXam metrics logged for this sweep yet.", ""]
    for m in findings.models:
        lines += _tradeoff_table(m)
    lines += _heldout_section(findings)
    lines += _scaling_section(findings)
    lines += ["## Runs kept out of the optima", "", *_excluded_table(findings),
              "## Definitions", "",
              f"- Final loss: {findings.final_loss_definition}.",
              f"- Noise: {findings.noise_rule}.",
              "- Gap: (best LoRA - best full FT) / best LoRA final loss, the reference "
              "study's convention (its 13.5% for 8B is (0.717 - 0.620) / 0.717).",
              "- Rank independence: the LR most ranks find best; a rank whose best LR differs "
              "counts as consistent only if that LR's loss is within noise of its best.",
              *[f"- {name.replace('_', ' ').capitalize()}: {text}."
                for name, text in findings.heldout_definitions.items()],
              "- Machine-readable: `findings.json`.", ""]
    return "\n".join(lines)


def _embed(body: str, figures: dict[str, list[Path]]) -> str:
    for paths in figures.values():
        for path in paths:
            if path.suffix == ".png":
                data = base64.b64encode(path.read_bytes()).decode()
                body = body.replace(f'src="{path.name}"', f'src="data:image/png;base64,{data}"')
    return body


def html_page(markdown_text: str, findings: Findings, figures: dict[str, list[Path]]) -> str:
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = _embed(renderer.render(markdown_text), figures)
    title = html.escape(f"LoRA vs full fine-tuning: sweep {findings.sweep_id}")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head>\n<body>\n{body}</body></html>\n")


def write_report(findings: Findings, figures: dict[str, list[Path]], out_dir: Path) -> dict:
    """Write report.md, report.html and findings.json; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(findings, figures)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html",
             "findings": out_dir / "findings.json"}
    paths["markdown"].write_text(text)
    paths["html"].write_text(html_page(text, findings, figures))
    paths["findings"].write_text(json.dumps(findings.model_dump(mode="json"), indent=2) + "\n")
    return paths
