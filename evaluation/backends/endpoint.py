"""Evaluation through an OpenAI-compatible server (vLLM on GPUs, ``transformers serve`` here).

The chat template is applied here, with the model's own tokenizer, and the rendered text
goes to ``/v1/completions``: both backends then see identical prompts, and the
log-likelihood scoring can continue an assistant turn that already holds the answer
marker. One request per question, sent concurrently; the server batches them.

Letter scoring reads the top-20 log-probabilities of the first token after the marker
(vLLM's ``logprobs``); a label outside the top 20 scores -inf. Servers that return no
log-probabilities (``transformers serve``) yield None: no log-likelihood accuracy.
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evaluation.backends.chat import render
from evaluation.prompt import ANSWER_PREFIX

TOP_LOGPROBS = 20


class EndpointBackend:
    """One served model (a base model or one LoRA adapter, chosen by ``model``)."""

    def __init__(self, base_url: str, model: str, tokenizer_path: str,
                 concurrency: int = 8, timeout_s: float = 3600.0, api_key: str = "EMPTY",
                 progress: bool = True) -> None:
        from openai import OpenAI
        from transformers import AutoTokenizer

        self.client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key,
                             timeout=timeout_s, max_retries=2)
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.concurrency = concurrency
        self.progress = progress

    def _map(self, what: str, fn: Any, items: list[Any]) -> list[Any]:
        started = time.monotonic()
        results: list[Any] = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for done, result in enumerate(pool.map(fn, items), start=1):
                results.append(result)
                if self.progress and (done % 10 == 0 or done == len(items)):
                    rate = done / max(time.monotonic() - started, 1e-9)
                    print(f"[evaluation] {what} via {self.model}: {done}/{len(items)} "
                          f"({rate:.2f}/s)", file=sys.stderr, flush=True)
        return results

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        def one(prompt: str) -> str:
            response = self.client.completions.create(
                model=self.model, prompt=render(self.tokenizer, prompt),
                max_tokens=max_new_tokens, temperature=0.0,
            )
            return response.choices[0].text or ""

        return self._map("generation", one, prompts)

    def choice_logprobs(self, prompts: list[str],
                        labels: list[tuple[str, ...]]) -> list[list[float]] | None:
        def one(pair: tuple[str, tuple[str, ...]]) -> list[float] | None:
            prompt, row = pair
            response = self.client.completions.create(
                model=self.model, prompt=render(self.tokenizer, prompt, ANSWER_PREFIX),
                max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS,
            )
            logprobs = response.choices[0].logprobs
            if logprobs is None or not logprobs.top_logprobs:
                return None
            top = logprobs.top_logprobs[0] or {}
            return [float(top.get(label, -math.inf)) for label in row]

        pairs = list(zip(prompts, labels, strict=True))
        if not pairs or one(pairs[0]) is None:  # probe once: does the server score at all?
            return None
        rows = self._map("log-likelihood", one, pairs)
        if any(row is None for row in rows):
            return None
        return rows
