"""Ways to ask a model: in-process transformers (CPU, tests) or an OpenAI-compatible
endpoint (a vLLM server with many LoRA adapters on GPUs, ``transformers serve`` here).

Both take the official user message and apply the model's chat template themselves, so
the two paths see the same text.
"""

from __future__ import annotations

from typing import Protocol


class Backend(Protocol):
    """What the evaluation loop needs from a model."""

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers to user messages, one per prompt, in order."""
        ...

    def choice_logprobs(self, prompts: list[str],
                        labels: list[tuple[str, ...]]) -> list[list[float]] | None:
        """Log-probability of each choice label right after the answer marker, or None
        when the backend cannot score (then no log-likelihood accuracy is reported)."""
        ...
