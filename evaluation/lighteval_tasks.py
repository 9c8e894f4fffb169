"""LEXam multiple-choice as a lighteval custom task (``--custom-tasks`` file, ``TASKS_TABLE``).

For users who run lighteval (its endpoint backend against the vLLM server, or its own
backends); the project's own runner (``python -m evaluation``) uses the same prompt and
extraction from ``evaluation.prompt`` and adds the log-likelihood accuracy. Tasks:
``lexam_mcq_4``, ``lexam_mcq_8``, ``lexam_mcq_16``, ``lexam_mcq_32`` with metrics
``accuracy`` (official: last ``###X###``, none = wrong) and ``format_rate``.

``LEXAM_GENERATION_SIZE`` lowers the generation budget (official: 4096), as the
project's ``max_new_tokens`` does. Data: ``hf_repo`` is the hub dataset, or a local
folder holding ``test.jsonl`` when ``LEXAM_LOCAL_DIR`` is set (lighteval reads local
folders as datasets), e.g.::

    lighteval endpoint litellm model_args.yaml "lexam_mcq_4|0" \\
        --custom-tasks evaluation/lighteval_tasks.py

Needs lighteval (0.13 API); this module is never imported by the rest of the package.
"""

from __future__ import annotations

import os

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation
from lighteval.metrics.utils.metric_utils import SampleLevelMetricGrouping
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc, SamplingMethod

from evaluation.data import HUB_REPO, normalise_record
from evaluation.prompt import build_prompt, choice_labels, extract_answer

GENERATION_SIZE_ENV = "LEXAM_GENERATION_SIZE"
GENERATION_SIZE = int(os.environ.get(GENERATION_SIZE_ENV, "4096"))  # official: 4096
LOCAL_DIR_ENV = "LEXAM_LOCAL_DIR"


def lexam_prompt(line: dict, task_name: str | None = None) -> Doc:
    """A dataset row (either schema) as a lighteval Doc with the official prompt."""
    question = normalise_record(line, 0)
    return Doc(
        task_name=task_name or "lexam_mcq",
        query=build_prompt(question.question, question.choices, question.course),
        choices=list(choice_labels(question.n_choices)),
        gold_index=question.gold,
        instruction="",
        specific={"id": question.id},
    )


class LexamOfficial(SampleLevelComputation):
    """Official accuracy and format rate for one generated answer."""

    def compute(self, doc: Doc, model_response, **kwargs) -> dict[str, float]:
        texts = getattr(model_response, "final_text", None) or model_response.text
        parsed = extract_answer(texts[0] if texts else "", len(doc.choices))
        gold = doc.choices[doc.gold_index if isinstance(doc.gold_index, int)
                           else doc.gold_index[0]]
        return {"accuracy": float(parsed == gold), "format_rate": float(parsed is not None)}


lexam_metric = SampleLevelMetricGrouping(
    metric_name=["accuracy", "format_rate"],
    higher_is_better={"accuracy": True, "format_rate": True},
    category=SamplingMethod.GENERATIVE,
    sample_level_fn=LexamOfficial(),
    corpus_level_fn={"accuracy": np.mean, "format_rate": np.mean},
)


def lexam_task(choices: int) -> LightevalTaskConfig:
    local = os.environ.get(LOCAL_DIR_ENV)
    return LightevalTaskConfig(
        name=f"lexam_mcq_{choices}",
        prompt_function=lexam_prompt,
        hf_repo=local or HUB_REPO,
        hf_subset="default" if local else f"mcq_{choices}_choices",
        metrics=[lexam_metric],
        hf_avail_splits=["test"],
        evaluation_splits=["test"],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=GENERATION_SIZE,
        stop_sequence=[],
    )


TASKS_TABLE = [lexam_task(n) for n in (4, 8, 16, 32)]
