"""Per-question outcomes and the ``lexam/*`` metrics computed from them.

Besides the official accuracy (unparsable answers count wrong) the metrics separate a
collapse of the answer format (``format_rate``, ``parsed_accuracy``) from a loss of legal
knowledge (``loglik_accuracy``: the choice letter the model finds most likely right after
the answer marker, no generation involved). ``chance`` sits next to them for reading.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

PREFIX = "lexam/"


class QuestionResult(BaseModel):
    """One question's outcome: what the details artifact holds per row."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    language: str = ""
    area: str = ""
    n_choices: int
    gold: str
    answer_text: str | None = None
    parsed: str | None = None
    loglik_choice: str | None = None
    loglik_scores: tuple[float, ...] | None = None

    @property
    def correct(self) -> bool:
        return self.parsed is not None and self.parsed == self.gold

    @property
    def loglik_correct(self) -> bool | None:
        return None if self.loglik_choice is None else self.loglik_choice == self.gold

    def detail(self) -> dict[str, object]:
        row = self.model_dump()
        row["correct"] = self.correct
        row["loglik_correct"] = self.loglik_correct
        return row


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "unknown"


def summary(results: Sequence[QuestionResult]) -> dict[str, float]:
    """Headline metrics (without the ``lexam/`` prefix) for a set of results.

    Generative metrics are present only when answers were generated, ``loglik_accuracy``
    only when choices were scored. ``parsed_accuracy`` is NaN when nothing parsed.
    """
    if not results:
        raise ValueError("no results to summarise")
    out: dict[str, float] = {
        "n_questions": float(len(results)),
        "chance": _mean([1.0 / r.n_choices for r in results]),
    }
    generated = [r for r in results if r.answer_text is not None]
    if generated:
        parsed = [r for r in generated if r.parsed is not None]
        out["accuracy"] = _mean([float(r.correct) for r in generated])
        out["format_rate"] = len(parsed) / len(generated)
        out["parsed_accuracy"] = _mean([float(r.correct) for r in parsed])
    scored = [r for r in results if r.loglik_choice is not None]
    if scored:
        out["loglik_accuracy"] = _mean([float(bool(r.loglik_correct)) for r in scored])
    return out


def compute_metrics(results: Sequence[QuestionResult]) -> dict[str, float]:
    """All ``lexam/*`` metrics: headline ones plus breakdowns by language and area.

    Breakdown names follow docs/CONVENTIONS.md: ``lexam/accuracy.lang_de``,
    ``lexam/accuracy.area_public``; the same for ``loglik_accuracy`` and ``n_questions``.
    """
    metrics = {PREFIX + key: value for key, value in summary(results).items()}
    groups: dict[str, list[QuestionResult]] = defaultdict(list)
    for result in results:
        if result.language:
            groups[f"lang_{_slug(result.language)}"].append(result)
        if result.area:
            groups[f"area_{_slug(result.area)}"].append(result)
    for group, members in sorted(groups.items()):
        part = summary(members)
        for key in ("accuracy", "loglik_accuracy", "n_questions"):
            if key in part:
                metrics[f"{PREFIX}{key}.{group}"] = part[key]
    return metrics


def finite(metrics: dict[str, float]) -> Iterable[tuple[str, float]]:
    """Metrics MLflow can chart (NaN is stored but breaks most plots)."""
    return ((key, value) for key, value in metrics.items() if not math.isnan(value))
