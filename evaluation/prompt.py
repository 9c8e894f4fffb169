"""The official LEXam MCQ prompt and its answer extraction.

The prompt follows the LEXam authors' lighteval community task (``letters`` variant):
course name, step-by-step legal reasoning, and the final answer as ``###C###``. The
official metric takes the *last* ``###X###`` whose X is one of the question's choice
letters; no match counts as wrong. Matching is case-sensitive, as in the official regex
(``###b###`` is not an answer). Beyond 26 choices (the 32-choice set) labels continue
spreadsheet-style: ``AA, AB, ...``.
"""

from __future__ import annotations

import re
import string
from functools import cache

PROMPT_VERSION = "lexam-mcq-letters-v1"

MCQ_PROMPT = """You are an expert in {course_name} and address legal issues in a structured, exam-style manner.
You are given a multiple-choice question, where only one choice (e.g., A, B, C, etc.) is correct.
Assume Swiss law applies unless specifically stated otherwise. If the context of the course justifies it, consider legal frameworks beyond Swiss law as well.

Please reason through the question step by step, using a chain-of-thought approach:
- Clarify the facts: Briefly restate or highlight the key facts in the question to anchor your reasoning.
- Issue Identification: What legal issue(s) arise from the facts?
- Rule Explanation: What legal rules or principles are relevant, and what are their sources (e.g., statutes, case law, doctrine)?
- Application and Reasoning: Apply the relevant rules to the facts, carefully weighing any ambiguities, exceptions, or competing interpretations.
- Eliminate Incorrect Answers: Briefly explain why each incorrect answer is wrong or less convincing.
- Conclusion: Clearly state the correct answer choice (e.g., A, B, C, etc.) with a brief justification for why it best fits the legal analysis.

Format your final answer as follows:
 Correct Answer: ###C### 

Question:
 {question}

Answer:"""  # noqa: E501, W291 - the official wording, kept byte for byte

# Where the log-likelihood scoring puts the choice label: right after the answer marker.
ANSWER_PREFIX = "Correct Answer: ###"


@cache
def choice_labels(n: int) -> tuple[str, ...]:
    """A, B, ... Z, AA, AB, ...: the labels of ``n`` choices."""
    if n < 1:
        raise ValueError("choices: need at least one choice")
    letters = string.ascii_uppercase
    labels = list(letters[:n])
    for first in letters:
        for second in letters:
            if len(labels) >= n:
                return tuple(labels)
            labels.append(first + second)
    return tuple(labels[:n])


def build_prompt(question: str, choices: tuple[str, ...] | list[str], course: str) -> str:
    """The official user message: the question followed by ``X. choice`` lines."""
    body = question
    for label, choice in zip(choice_labels(len(choices)), choices, strict=True):
        body += f"\n{label}. {choice}"
    return MCQ_PROMPT.format(course_name=course or "law", question=body)


@cache
def _answer_pattern(n_choices: int) -> re.Pattern[str]:
    labels = sorted(choice_labels(n_choices), key=len, reverse=True)
    return re.compile("###(" + "|".join(labels) + ")###")


def extract_answer(text: str, n_choices: int) -> str | None:
    """The official extraction: the last ``###X###`` with X a valid label, else None."""
    matches = _answer_pattern(n_choices).findall(text or "")
    return matches[-1] if matches else None
