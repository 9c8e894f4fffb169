"""Evaluation through an OpenAI-compatible server (vLLM on GPUs and here on CPU).

The chat template is applied here, with the model's own tokenizer, and the prompt goes to
``/v1/completions`` as token ids: the server sees exactly the tokens the in-process backend
sees (no second tokenization, no extra BOS), and the log-likelihood scoring can continue
an assistant turn that already holds the answer marker. One request per question, sent
concurrently; the server batches them.

Letter scoring follows ``evaluation.scoring``: every label's continuation ``label###`` is
sent after the prompt with ``echo`` and ``logprobs``, and the server returns the
log-probability of each of those prompt tokens. One sequence per request, one request at a
time (``scoring_concurrency``): vLLM 0.32's CPU build fails a batch that holds several
prompt-log-probability requests while LoRA is enabled (its CPU LoRA kernel applies one
adapter index per request to every prompt row). No top-k list is read, so any label,
of any token length, gets its real score. A server that returns no log-probabilities
yields None: no log-likelihood accuracy is reported.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evaluation.backends.chat import render
from evaluation.scoring import continuation_ids, label_score, prompt_ids, scoring_prefix_ids


class EndpointBackend:
    """One served model (a base model or one LoRA adapter, chosen by ``model``).

    ``token_ids=False`` sends rendered text instead, for servers that accept only text
    (``transformers serve``, the CPU stand-in in tests).
    """

    def __init__(self, base_url: str, model: str, tokenizer_path: str,
                 concurrency: int = 8, timeout_s: float = 3600.0, api_key: str = "EMPTY",
                 progress: bool = True, token_ids: bool = True,
                 scoring_concurrency: int = 1) -> None:
        from openai import OpenAI
        from transformers import AutoTokenizer

        self.client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key,
                             timeout=timeout_s, max_retries=2)
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.concurrency = concurrency
        self.progress = progress
        self.token_ids = token_ids
        self.scoring_concurrency = scoring_concurrency

    def _map(self, what: str, fn: Any, items: list[Any], workers: int | None = None
             ) -> list[Any]:
        started = time.monotonic()
        results: list[Any] = []
        with ThreadPoolExecutor(max_workers=workers or self.concurrency) as pool:
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
                model=self.model, max_tokens=max_new_tokens, temperature=0.0,
                prompt=(prompt_ids(self.tokenizer, prompt) if self.token_ids
                        else render(self.tokenizer, prompt)),
            )
            return response.choices[0].text or ""

        return self._map("generation", one, prompts)

    def choice_logprobs(self, prompts: list[str],
                        labels: list[tuple[str, ...]]) -> list[list[float]] | None:
        if not self.token_ids:
            return None  # text-only servers return no prompt log-probabilities

        def one(pair: tuple[str, tuple[str, ...]]) -> list[float] | None:
            prompt, row = pair
            prefix = scoring_prefix_ids(self.tokenizer, prompt)
            continuations = [continuation_ids(self.tokenizer, label) for label in row]
            scores = []
            for continuation in continuations:
                response = self.client.completions.create(
                    model=self.model, prompt=prefix + continuation, max_tokens=0, echo=True,
                    logprobs=0, temperature=0.0,
                )
                logprobs = response.choices[0].logprobs
                if logprobs is None or not logprobs.token_logprobs:
                    return None
                scores.append(label_score(logprobs.token_logprobs[-len(continuation):]))
            return scores

        pairs = list(zip(prompts, labels, strict=True))
        if not pairs or one(pairs[0]) is None:  # probe once: does the server score at all?
            return None
        rows = self._map("log-likelihood", one, pairs, workers=self.scoring_concurrency)
        if any(row is None for row in rows):
            return None
        return rows
