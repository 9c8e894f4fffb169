"""How a choice label is scored by log-likelihood: one rule for every backend.

The answer marker (``Correct Answer: ###``) is written into the assistant turn and each
label is scored as the continuation ``label###``:

- the closing ``###`` makes every label a complete answer: without it ``1`` is a prefix of
  ``12`` and so always at least as likely;
- the score is the mean log-probability per token of that continuation, so a label that
  tokenizes into two tokens is not penalised for its extra token (a summed score would be);
- prompt and continuation are tokenized apart and joined as token ids, so the in-process
  backend and a server (which gets the ids, not text) score exactly the same sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from evaluation.backends.chat import render
from evaluation.prompt import ANSWER_PREFIX, ANSWER_SUFFIX


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The templated user turn and the open assistant turn, for generation."""
    return _ids(tokenizer, render(tokenizer, prompt))


def scoring_prefix_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The same, with the answer marker already written by the assistant."""
    return _ids(tokenizer, render(tokenizer, prompt, ANSWER_PREFIX))


def continuation_ids(tokenizer: Any, label: str) -> list[int]:
    """The tokens scored for one label: the label, then the closing marker."""
    return _ids(tokenizer, label) + _ids(tokenizer, ANSWER_SUFFIX)


def label_score(token_logprobs: Sequence[float | None]) -> float:
    """Mean log-probability per continuation token; -inf when any is missing or -inf."""
    values = [float("-inf") if v is None else float(v) for v in token_logprobs]
    if not values or not all(math.isfinite(v) for v in values):
        return float("-inf")
    return sum(values) / len(values)
