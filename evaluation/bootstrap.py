"""How far a fine-tune's LEXam accuracy is from the base model's, with its noise.

The question set is a sample: an accuracy difference of a few points on 100 questions may
be chance. A paired bootstrap over questions (resample the questions, recompute both
accuracies on the same resample) gives a confidence interval of the difference; a drop
counts as real only when the whole interval lies below zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def paired_difference(base: Mapping[str, bool], other: Mapping[str, bool],
                      samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                      ) -> tuple[float, float, float, int] | None:
    """(other - base accuracy, CI low, CI high, questions) on the questions both answered;
    None when they share none."""
    shared = sorted(set(base) & set(other))
    if not shared:
        return None
    diff = np.array([float(other[q]) - float(base[q]) for q in shared])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high), len(shared)
