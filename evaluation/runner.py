"""One evaluation: options -> questions -> backend answers -> per-question results -> metrics.

Defaults match the official setup (all questions, greedy decoding, 4096 new tokens);
subsets (``max_questions``, a seeded sample, a language filter) and a smaller generation
budget are options, and all of them enter the evaluation set hash.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.backends import Backend
from evaluation.data import (
    HUB_REPO,
    LexamQuestion,
    eval_set_hash,
    load_questions,
    select_questions,
)
from evaluation.metrics import QuestionResult, compute_metrics
from evaluation.prompt import PROMPT_VERSION, build_prompt, choice_labels, extract_answer
from training.spec import SAFE_PATH_RE

# The same character set as a run spec's paths: sources may end up in job command lines.
SAFE_SOURCE_RE = SAFE_PATH_RE
LANG_RE = re.compile(r"^[a-z]{2,3}$")


class EvalOptions(BaseModel):
    """What to evaluate on and how; validated because it can come from a trigger form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = f"hub:{HUB_REPO}"
    choices: Literal[4, 8, 16, 32] = 4
    max_questions: int | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    languages: tuple[str, ...] | None = None
    max_new_tokens: int = Field(default=4096, gt=0, le=65536)
    generate: bool = True
    loglik: bool = True
    batch_size: int = Field(default=8, gt=0, le=1024)
    synthetic_size: int = Field(default=64, gt=0, le=100_000)

    @field_validator("data")
    @classmethod
    def _safe_data(cls, value: str) -> str:
        if not SAFE_SOURCE_RE.fullmatch(value) or value.startswith("-"):
            raise ValueError("must be a path, 'synthetic' or hub:REPO without spaces or "
                             "shell metacharacters")
        return value

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            for code in value:
                if not LANG_RE.fullmatch(code):
                    raise ValueError(f"{code!r} is not a language code like 'de'")
        return value or None

    def identity(self) -> dict[str, object]:
        """The options that change the numbers (the data enters through its content)."""
        return {
            "prompt": PROMPT_VERSION, "choices": self.choices,
            "max_questions": self.max_questions, "seed": self.seed,
            "languages": list(self.languages) if self.languages else None,
            "max_new_tokens": self.max_new_tokens if self.generate else None,
            "generate": self.generate, "loglik": self.loglik,
        }


class EvalSet(BaseModel):
    """The selected questions and their hash."""

    questions: list[LexamQuestion]
    eval_hash: str
    source: str


def build_eval_set(options: EvalOptions) -> EvalSet:
    questions = load_questions(options.data, options.choices, options.synthetic_size,
                               options.seed)
    chosen = select_questions(questions, options.max_questions, options.seed,
                              options.languages)
    return EvalSet(questions=chosen, eval_hash=eval_set_hash(chosen, options.identity()),
                   source=options.data)


class EvalReport(BaseModel):
    """Everything one evaluation produced; written as JSON and into MLflow."""

    model: str
    adapter: str | None = None
    backend: str
    eval_hash: str
    data: str
    options: dict[str, object]
    metrics: dict[str, float]
    results: list[QuestionResult]
    runtime_s: float
    run_id: str | None = None

    def summary_dict(self) -> dict[str, object]:
        return self.model_dump(exclude={"results"})

    def details(self) -> list[dict[str, object]]:
        return [result.detail() for result in self.results]

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self.summary_dict(), "details": self.details()}
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
        return path


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def evaluate(backend: Backend, eval_set: EvalSet, options: EvalOptions, *, model: str,
             adapter: str | None = None, backend_name: str = "transformers") -> EvalReport:
    """Ask the backend every question (generation and/or letter scoring) and score it."""
    started = time.monotonic()
    questions = eval_set.questions
    prompts = [build_prompt(q.question, q.choices, q.course) for q in questions]
    labels = [choice_labels(q.n_choices) for q in questions]
    answers: list[str | None] = [None] * len(questions)
    if options.generate:
        answers = list(backend.generate(prompts, options.max_new_tokens))
    scores = backend.choice_logprobs(prompts, labels) if options.loglik else None
    results = []
    for i, question in enumerate(questions):
        row_labels = labels[i]
        answer = answers[i]
        results.append(QuestionResult(
            prompt_id=question.id, language=question.language, area=question.area,
            n_choices=question.n_choices, gold=row_labels[question.gold],
            answer_text=answer,
            parsed=None if answer is None else extract_answer(answer, question.n_choices),
            loglik_choice=row_labels[_argmax(scores[i])] if scores else None,
            loglik_scores=tuple(scores[i]) if scores else None,
        ))
    return EvalReport(
        model=model, adapter=adapter, backend=backend_name, eval_hash=eval_set.eval_hash,
        data=eval_set.source, options=options.identity(), metrics=compute_metrics(results),
        results=results, runtime_s=time.monotonic() - started,
    )
