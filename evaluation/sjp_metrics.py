"""Held-out SJP metrics from a table of per-case predictions (pure Python, no model).

The outcome a model predicts is the more likely of the two outcome words after the prompt
(``approval`` vs ``dismissal``, log-likelihoods compared). Accuracy and macro-F1 (the SJP
benchmark's own metric: the mean of the two classes' F1, so a model that always says
"dismissal" cannot look good on imbalanced data) stand next to the majority-class
baseline, which predicts the most common training outcome for every case. The loss is
the mean negative log-likelihood per token of the true outcome word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

PREFIX = "sjp/"
LABELS = (0, 1)  # 0 dismissal, 1 approval (SJP)
CLASS_NAMES = {0: "dismissal", 1: "approval"}


class CasePrediction(BaseModel):
    """One held-out case: its outcome, the two log-likelihoods, the prediction."""

    model_config = ConfigDict(frozen=True)

    case_id: str
    gold: int
    logp_dismissal: float
    logp_approval: float
    gold_tokens: int = 1  # tokens of the true outcome word (for the per-token loss)
    language: str = ""

    @property
    def predicted(self) -> int:
        return 1 if self.logp_approval > self.logp_dismissal else 0

    @property
    def gold_logp(self) -> float:
        return self.logp_approval if self.gold == 1 else self.logp_dismissal

    def detail(self) -> dict[str, object]:
        return {**self.model_dump(), "predicted": self.predicted,
                "correct": self.predicted == self.gold}


def f1_scores(gold: Sequence[int], predicted: Sequence[int]) -> dict[int, float]:
    """F1 of each class; a class never predicted nor present scores 0 (as SJP does)."""
    scores = {}
    for label in LABELS:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores[label] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return scores


def macro_f1(gold: Sequence[int], predicted: Sequence[int]) -> float:
    scores = f1_scores(gold, predicted)
    return sum(scores.values()) / len(scores)


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> float:
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)


def sjp_metrics(cases: Sequence[CasePrediction], majority_label: int) -> dict[str, float]:
    """``sjp/*`` metrics of a prediction table, with the majority baseline beside them."""
    if not cases:
        raise ValueError("no held-out cases to score")
    gold = [c.gold for c in cases]
    predicted = [c.predicted for c in cases]
    majority = [majority_label] * len(cases)
    per_class = f1_scores(gold, predicted)
    losses = [-c.gold_logp / max(c.gold_tokens, 1) for c in cases]
    finite = [x for x in losses if math.isfinite(x)]
    return {
        f"{PREFIX}accuracy": accuracy(gold, predicted),
        f"{PREFIX}macro_f1": sum(per_class.values()) / len(per_class),
        f"{PREFIX}f1_dismissal": per_class[0],
        f"{PREFIX}f1_approval": per_class[1],
        f"{PREFIX}loss": sum(finite) / len(finite) if finite else math.nan,
        f"{PREFIX}predicted_approval_rate": sum(predicted) / len(predicted),
        f"{PREFIX}approval_rate": sum(gold) / len(gold),
        f"{PREFIX}majority_accuracy": accuracy(gold, majority),
        f"{PREFIX}majority_macro_f1": macro_f1(gold, majority),
        f"{PREFIX}majority_label": float(majority_label),
        f"{PREFIX}n_cases": float(len(cases)),
    }
