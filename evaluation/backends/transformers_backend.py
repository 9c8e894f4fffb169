"""In-process evaluation with transformers: batched greedy generation and letter scoring.

Used on CPU (tests, the embedded default) and wherever no vLLM server runs. One base
model is loaded once; LoRA adapters are attached by name with PEFT and switched between
(or switched off for the base model), so a whole sweep's adapters share one process.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.backends.chat import render
from evaluation.prompt import ANSWER_PREFIX

Dtype = Literal["float32", "bfloat16", "float16"]


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
        """Indices in batches of similar length (less padding), longest first."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

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
        prefixes = [render(self.tokenizer, prompt, ANSWER_PREFIX) for prompt in prompts]
        scores: list[list[float]] = [[] for _ in prompts]
        started, done = time.monotonic(), 0
        with self._active_weights():
            for indices in self._batches(prefixes):
                for i, row in zip(indices, self._score_batch(
                        [prefixes[i] for i in indices], [labels[i] for i in indices]),
                        strict=True):
                    scores[i] = row
                done += len(indices)
                self._report("log-likelihood", done, len(prompts), started)
        return scores

    def _label_ids(self, label: str) -> list[int]:
        return self.tokenizer(label, add_special_tokens=False)["input_ids"]

    def _forward(self, sequences: list[list[int]]) -> torch.Tensor:
        """Log-softmax over the vocabulary for left-padded sequences (B, T, V)."""
        width = max(len(seq) for seq in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def _score_batch(self, prefixes: list[str],
                     labels: list[tuple[str, ...]]) -> list[list[float]]:
        prefix_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
        label_ids = [[self._label_ids(label) for label in row] for row in labels]
        if all(len(ids) == 1 for row in label_ids for ids in row):
            # One forward pass per question: the next-token distribution after the marker.
            logprobs = self._forward(prefix_ids)[:, -1, :]
            return [[logprobs[b, ids[0]].item() for ids in row]
                    for b, row in enumerate(label_ids)]
        # Multi-token labels (AA, AB, ...): score prefix + label sequences.
        sequences, owners = [], []
        for b, row in enumerate(label_ids):
            for ids in row:
                sequences.append(prefix_ids[b] + ids)
                owners.append((b, len(ids)))
        logprobs = self._forward(sequences)
        width = logprobs.shape[1]
        out: list[list[float]] = [[] for _ in prefixes]
        for k, (b, n) in enumerate(owners):
            targets = sequences[k][-n:]
            total = 0.0
            for j, token in enumerate(targets):
                total += logprobs[k, width - n - 1 + j, token].item()
            out[b].append(total if math.isfinite(total) else -math.inf)
        return out
