"""One evaluation: options -> questions -> backend answers -> per-question results -> metrics.

Defaults match the official setup (all questions, greedy decoding, 4096 new tokens);
subsets (``max_questions``, a seeded sample, a language filter) and a smaller generation
budget are options, and all of them enter the evaluation set hash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel

from contracts.evaluation import EvalOptions
from evaluation.backends import Backend
from evaluation.data import (
    LexamQuestion,
    eval_set_hash,
    load_questions,
    select_questions,
)
from evaluation.metrics import QuestionResult, compute_metrics
from evaluation.prompt import build_prompt, choice_labels, extract_answer, prompt_version


def options_identity(options: EvalOptions) -> dict[str, object]:
    """The options that change the numbers (the data enters through its content)."""
    return {
        "prompt": prompt_version(options.choices), "choices": options.choices,
        "max_questions": options.max_questions, "seed": options.seed,
        "languages": list(options.languages) if options.languages else None,
        "max_new_tokens": options.max_new_tokens if options.generate else None,
        "generate": options.generate, "loglik": options.loglik,
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
    return EvalSet(questions=chosen, eval_hash=eval_set_hash(chosen, options_identity(options)),
                   source=options.data)


class EvalReport(BaseModel):
    """Everything one evaluation produced; written as JSON and into MLflow."""

    model: str
    adapter: str | None = None
    backend: str
    scorer: str = "project"
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

    @classmethod
    def read_json(cls, path: str | Path) -> EvalReport:
        """A report written by ``write_json`` (its details become the results again)."""
        payload = json.loads(Path(path).read_text())
        details = payload.pop("details", [])
        return cls.model_validate({**payload, "results": details})

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
        data=eval_set.source, options=options_identity(options), metrics=compute_metrics(results),
        results=results, runtime_s=time.monotonic() - started,
    )
