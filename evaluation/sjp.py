"""Held-out SJP scoring: each run (and the untouched base model) on cases it never saw.

The held-out cases come from the run's recorded split (``data/split.json``), rebuilt and
checked by ``training.split.heldout_cases``. Each case is formatted exactly as in training
(same prompt, same truncation for the run's ``max_seq_length``) and the two outcome words
are scored after the rendered prompt: the more likely one is the prediction
(``evaluation.sjp_metrics``). Scoring is by log-likelihood only, no generation, so it is
cheap next to LEXam and works the same on every backend that can score a continuation:
in process (transformers) or through an OpenAI-compatible server that echoes prompt
log-probabilities (vLLM).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.names import TAG_SPLIT_HASH
from contracts.splits import SplitRecord
from evaluation.backends.chat import render
from evaluation.sjp_metrics import CasePrediction, sjp_metrics
from training.formatting import OUTCOMES, SftFormatter
from training.split import case_key, heldout_cases

SJP_DETAILS = "sjp/details.json"


class SjpCase(BaseModel):
    case_id: str
    gold: int
    language: str = ""
    prompt: str  # the user message, facts truncated as in training


class SjpSet(BaseModel):
    """The held-out cases of one split, ready to score."""

    split_hash: str
    majority_label: int
    cases: list[SjpCase]


class SjpReport(BaseModel):
    """One model's held-out scores; written as JSON, then logged to its run."""

    split_hash: str
    step: int
    metrics: dict[str, float]
    predictions: list[CasePrediction]
    runtime_s: float

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self.model_dump(exclude={"predictions"}),
                   "details": [p.detail() for p in self.predictions]}
        path.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        return path


def build_sjp_set(record: SplitRecord, tokenizer: Any, max_seq_length: int,
                  max_cases: int | None = None) -> SjpSet:
    rows = heldout_cases(record, max_cases)
    formatter = SftFormatter(tokenizer, max_seq_length)
    cases = [SjpCase(case_id=case_key(row), gold=int(row["label"]),
                     language=str(row.get("language") or ""),
                     prompt=formatter.format_row(row)["prompt"][0]["content"])
             for row in rows]
    return SjpSet(split_hash=record.split_hash, majority_label=record.majority_label,
                  cases=cases)


def score_sjp(backend: Any, sjp_set: SjpSet, step: int = 0) -> SjpReport | None:
    """Score every case of ``sjp_set``; None when the backend cannot score continuations."""
    started = time.monotonic()
    words = (OUTCOMES[0], OUTCOMES[1])
    prefixes = [render(backend.tokenizer, case.prompt) for case in sjp_set.cases]
    scores = continuation_logprobs(backend, prefixes, words)
    if scores is None:
        return None
    predictions = [
        CasePrediction(case_id=case.case_id, gold=case.gold, language=case.language,
                       logp_dismissal=row[0][0], logp_approval=row[1][0],
                       gold_tokens=row[case.gold][1])
        for case, row in zip(sjp_set.cases, scores, strict=True)]
    report = SjpReport(split_hash=sjp_set.split_hash, step=step,
                       metrics=sjp_metrics(predictions, sjp_set.majority_label),
                       predictions=predictions, runtime_s=time.monotonic() - started)
    m = report.metrics
    print(f"[evaluation] SJP held-out (n={len(predictions)}): macro-F1 {m['sjp/macro_f1']:.3f}, "
          f"accuracy {m['sjp/accuracy']:.3f} (majority {m['sjp/majority_macro_f1']:.3f} / "
          f"{m['sjp/majority_accuracy']:.3f})", file=sys.stderr)
    return report


def continuation_logprobs(backend: Any, prefixes: list[str], words: tuple[str, ...]
                          ) -> list[list[tuple[float, int]]] | None:
    """(summed log-probability, token count) of each word after each prefix."""
    from evaluation.backends.endpoint import EndpointBackend

    if isinstance(backend, EndpointBackend):
        return _endpoint_logprobs(backend, prefixes, words)
    return _local_logprobs(backend, prefixes, words)


def _local_logprobs(backend: Any, prefixes: list[str], words: tuple[str, ...]
                    ) -> list[list[tuple[float, int]]]:
    import torch

    tokenizer, model = backend.tokenizer, backend.model
    word_ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
    sequences, owners = [], []
    for i, prefix in enumerate(prefixes):
        ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        for j, continuation in enumerate(word_ids):
            sequences.append(ids + continuation)
            owners.append((i, j))
    out: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(words) for _ in prefixes]
    batch = max(1, getattr(backend, "batch_size", 8))
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = max(len(ids) for ids in word_ids) + 1
    # The backend's adapter switch (None: adapters off for the untouched base model).
    with torch.inference_mode(), backend._active_weights():
        for start in range(0, len(order), batch):
            chunk = [sequences[k] for k in order[start:start + batch]]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk],
                               device=backend.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk],
                                device=backend.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, k in enumerate(order[start:start + batch]):
                i, j = owners[k]
                targets = word_ids[j]
                n = len(targets)
                # logits[t] predicts token t+1; the kept window ends at the last token.
                total = sum(logprobs[row, keep - n - 1 + t, token].item()
                            for t, token in enumerate(targets))
                out[i][j] = (total if math.isfinite(total) else -math.inf, n)
    return out


def _endpoint_logprobs(backend: Any, prefixes: list[str], words: tuple[str, ...]
                       ) -> list[list[tuple[float, int]]] | None:
    """Prompt log-probabilities echoed by the server (vLLM: ``echo`` + ``logprobs``); the
    word's tokens are those whose text offset lies past the prefix."""
    def one(pair: tuple[str, str]) -> tuple[float, int] | None:
        prefix, word = pair
        response = backend.client.completions.create(
            model=backend.model, prompt=prefix + word, max_tokens=1, temperature=0.0,
            echo=True, logprobs=1)
        logprobs = response.choices[0].logprobs
        if logprobs is None or not logprobs.token_logprobs or not logprobs.text_offset:
            return None
        end = len(prefix) + len(word)
        picked = [lp for lp, offset in zip(logprobs.token_logprobs, logprobs.text_offset,
                                           strict=False)
                  if len(prefix) <= offset < end and lp is not None]
        return (float(sum(picked)), len(picked)) if picked else None

    pairs = [(prefix, word) for prefix in prefixes for word in words]
    if not pairs or one(pairs[0]) is None:  # the server does not echo log-probabilities
        return None
    # One request at a time, as for the LEXam letters: vLLM 0.32's CPU LoRA kernel mixes up
    # the rows of a batch of prompt-logprob requests (see evaluation/backends/endpoint.py).
    flat = backend._map("SJP log-likelihood", one, pairs,
                        workers=getattr(backend, "scoring_concurrency", 1))
    if any(item is None for item in flat):
        return None
    return [flat[i:i + len(words)] for i in range(0, len(flat), len(words))]


# -- which held-out set, and logging ---------------------------------------------------------


def common_split(records: list[SplitRecord]) -> SplitRecord | None:
    """The split most runs share (the base model is scored on that one)."""
    if not records:
        return None
    counts = Counter(r.split_hash for r in records)
    best = counts.most_common(1)[0][0]
    if len(counts) > 1:
        print(f"[evaluation] runs use {len(counts)} different held-out sets; the base model "
              f"is scored on {best} ({counts[best]} runs)", file=sys.stderr)
    return next(r for r in records if r.split_hash == best)


def log_sjp(client: Any, run_id: str, report: SjpReport, details: bool = True) -> None:
    """``sjp/*`` at the report's step; the per-case table as ``sjp/details.json``."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, report.step) for k, v in report.metrics.items()
               if not math.isnan(v)]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(TAG_SPLIT_HASH, report.split_hash)])
    if details:
        client.log_text(run_id, json.dumps([p.detail() for p in report.predictions], indent=1,
                                           ensure_ascii=False), SJP_DETAILS)
