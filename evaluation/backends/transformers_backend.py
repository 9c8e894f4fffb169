"""In-process evaluation with transformers: batched greedy generation and letter scoring.

Used on CPU (tests, the embedded default) and wherever no vLLM server runs. One base
model is loaded once; LoRA adapters are attached by name with PEFT and switched between
(or switched off for the base model), so a whole sweep's adapters share one process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.backends.chat import render
from evaluation.scoring import continuation_ids, label_score, scoring_prefix_ids

Dtype = Literal["float32", "bfloat16", "float16"]


MAX_BATCH_TOKENS = 8192  # padded prompt tokens per generation batch


def length_batches(lengths: list[int], batch_size: int,
                   max_tokens: int = MAX_BATCH_TOKENS) -> Iterator[list[int]]:
    """Indices grouped longest first: at most ``batch_size`` each, every member at least
    half as long as the batch's longest, ``len(batch) * longest <= max_tokens`` (a prompt
    longer than that goes alone)."""
    batch: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) == batch_size or 2 * lengths[i] < longest
                      or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class TransformersBackend:
    """A causal LM (plus optional named LoRA adapters) answering LEXam prompts."""

    def __init__(self, model_path: str, adapter_path: str | Path | None = None,
                 dtype: Dtype = "bfloat16", batch_size: int = 8, device: str = "cpu",
                 progress: bool = True) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype)
        ).to(self.device)
        self.model.eval()
        self._adapters: set[str] = set()
        self._active: str | None = None
        if adapter_path is not None:
            self.add_adapter("default", adapter_path)
            self.use("default")

    # -- adapters -------------------------------------------------------------------------

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Attach a LoRA adapter under ``name`` (the base weights are shared)."""
        from peft import PeftModel

        if not self._adapters:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.eval()
        self._adapters.add(name)

    def use(self, name: str | None) -> None:
        """Evaluate with adapter ``name`` from now on; None means the untouched base."""
        if name is not None:
            if name not in self._adapters:
                raise KeyError(f"adapter {name!r} is not loaded")
            self.model.set_adapter(name)
        self._active = name

    @contextmanager
    def _active_weights(self) -> Iterator[None]:
        if self._adapters and self._active is None:
            with self.model.disable_adapter():
                yield
        else:
            yield

    # -- batching -------------------------------------------------------------------------

    def _batches(self, texts: list[str]) -> Iterator[list[int]]:
        """Indices in batches of similar token length, longest first. A batch is padded to
        its longest prompt, so a prompt joins only if it is at least half as long as that
        one and the padded batch stays within ``MAX_BATCH_TOKENS``: one 2,077-token LEXam
        question padded seven 600-token ones to a 8 x 2,077 prefill (46 s on 2 CPU
        cores; 14 s when it ran alone and the others together)."""
        yield from length_batches(
            [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]],
            self.batch_size)

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                               add_special_tokens=False).to(self.device)
        return dict(batch)

    def _report(self, what: str, done: int, total: int, started: float) -> None:
        if self.progress:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"[evaluation] {what}: {done}/{total} questions ({rate:.2f}/s)",
                  file=sys.stderr, flush=True)

    # -- the Backend protocol ---------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        texts = [render(self.tokenizer, prompt) for prompt in prompts]
        answers: list[str] = [""] * len(texts)
        started, done = time.monotonic(), 0
        with self._active_weights():
            for indices in self._batches(texts):
                batch = self._encode([texts[i] for i in indices])
                output = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new_tokens = output[:, batch["input_ids"].shape[1]:]
                for i, tokens in zip(indices, new_tokens, strict=True):
                    answers[i] = self.tokenizer.decode(tokens, skip_special_tokens=True)
                done += len(indices)
                self._report("generation", done, len(texts), started)
        return answers

    @torch.inference_mode()
    def choice_logprobs(self, prompts: list[str],
                        labels: list[tuple[str, ...]]) -> list[list[float]]:
        """Each label's score (``evaluation.scoring``), one question at a time: the prompt
        is run once and its key/value cache shared by all the labels' continuations."""
        scores: list[list[float]] = []
        started = time.monotonic()
        with self._active_weights():
            for done, (prompt, row) in enumerate(zip(prompts, labels, strict=True), start=1):
                prefix = scoring_prefix_ids(self.tokenizer, prompt)
                continuations = [continuation_ids(self.tokenizer, label) for label in row]
                scores.append([label_score(lp) for lp in self._continuation_logprobs(
                    prefix, continuations)])
                if done % self.batch_size == 0 or done == len(prompts):
                    self._report("log-likelihood", done, len(prompts), started)
        return scores

    def _continuation_logprobs(self, prefix: list[int],
                               continuations: list[list[int]]) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after ``prefix``."""
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        rows = [[first[c[0]].item()] for c in continuations]
        width = max(len(c) for c in continuations)
        if width == 1:
            return rows
        # The rest of every continuation in one batch on top of the shared prompt cache.
        # Right padding: a padded position comes after the real tokens, so it changes none.
        n = len(continuations)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        pad = self.tokenizer.pad_token_id
        tokens = torch.tensor([c + [pad] * (width - len(c)) for c in continuations],
                              device=self.device)
        positions = torch.arange(len(prefix), len(prefix) + width - 1,
                                 device=self.device).expand(n, -1)
        mask = torch.ones(n, len(prefix) + width - 1, dtype=torch.long, device=self.device)
        logits = self.model(input_ids=tokens[:, :-1], past_key_values=cache,
                            attention_mask=mask, position_ids=positions).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for k, c in enumerate(continuations):
            rows[k] += [logprobs[k, j - 1, c[j]].item() for j in range(1, len(c))]
        return rows
