"""The official LEXam MCQ prompts and their answer extraction.

The official LEXam code has two prompt variants: ``letters`` (choices ``A. ...``, final
answer ``###C###``) and ``numbers`` (choices ``1. ...``, final answer ``###3###``). Up to
26 choices (the 4-, 8- and 16-choice sets) use ``letters``, the official default; the
32-choice set has more choices than the alphabet and uses ``numbers``. The official metric
takes the *last* ``###X###`` whose X is one of the question's labels; no match counts as
wrong. Matching is case-sensitive, as in the official regex (``###b###`` is not an answer).
"""

from __future__ import annotations

import re
import string
from functools import cache
from typing import Literal

Style = Literal["letters", "numbers"]

_HEADER = """You are an expert in {{course_name}} and address legal issues in a structured, exam-style manner.
You are given a multiple-choice question, where only one choice (e.g., {examples}, etc.) is correct.
Assume Swiss law applies unless specifically stated otherwise. If the context of the course justifies it, consider legal frameworks beyond Swiss law as well.

Please reason through the question step by step, using a chain-of-thought approach:
- Clarify the facts: Briefly restate or highlight the key facts in the question to anchor your reasoning.
- Issue Identification: What legal issue(s) arise from the facts?
- Rule Explanation: What legal rules or principles are relevant, and what are their sources (e.g., statutes, case law, doctrine)?
- Application and Reasoning: Apply the relevant rules to the facts, carefully weighing any ambiguities, exceptions, or competing interpretations.
- Eliminate Incorrect Answers: Briefly explain why each incorrect answer is wrong or less convincing.
- Conclusion: Clearly state the correct answer choice (e.g., {examples}, etc.) with a brief justification for why it best fits the legal analysis.

Format your final answer as follows:
 Correct Answer: ###{example}### 

Question:
 {{question}}

Answer:"""  # noqa: E501, W291 - the official wording, kept byte for byte

MCQ_PROMPTS: dict[Style, str] = {
    "letters": _HEADER.format(examples="A, B, C", example="C"),
    "numbers": _HEADER.format(examples="1, 2, 3", example="3"),
}
MCQ_PROMPT = MCQ_PROMPTS["letters"]

# Where the log-likelihood scoring puts the choice label, and what closes it.
ANSWER_PREFIX = "Correct Answer: ###"
ANSWER_SUFFIX = "###"


def answer_style(n_choices: int) -> Style:
    """``letters`` while the alphabet suffices, else the official ``numbers`` variant."""
    return "letters" if n_choices <= len(string.ascii_uppercase) else "numbers"


def prompt_version(n_choices: int) -> str:
    """Names the prompt in the evaluation set's identity (4-choice hashes stay as they were)."""
    return f"lexam-mcq-{answer_style(n_choices)}-v1"


@cache
def choice_labels(n: int) -> tuple[str, ...]:
    """``A, B, ...`` up to 26 choices, ``1, 2, ... n`` beyond (the ``numbers`` variant)."""
    if n < 1:
        raise ValueError("choices: need at least one choice")
    if answer_style(n) == "letters":
        return tuple(string.ascii_uppercase[:n])
    return tuple(str(i) for i in range(1, n + 1))


def build_prompt(question: str, choices: tuple[str, ...] | list[str], course: str) -> str:
    """The official user message: the question followed by ``X. choice`` lines."""
    body = question
    for label, choice in zip(choice_labels(len(choices)), choices, strict=True):
        body += f"\n{label}. {choice}"
    template = MCQ_PROMPTS[answer_style(len(choices))]
    return template.format(course_name=course or "law", question=body)


@cache
def _answer_pattern(n_choices: int) -> re.Pattern[str]:
    labels = sorted(choice_labels(n_choices), key=len, reverse=True)
    return re.compile("###(" + "|".join(labels) + ")###")


def extract_answer(text: str, n_choices: int) -> str | None:
    """The official extraction: the last ``###X###`` with X a valid label, else None."""
    matches = _answer_pattern(n_choices).findall(text or "")
    return matches[-1] if matches else None
