"""SJP cases as conversational prompt/completion pairs for TRL's SFTTrainer.

One fixed, documented English prompt for all case languages (German, French, Italian):
the facts are quoted as they are, so the model sees the original text, and the answer is
one of two English outcome words. Prompt/completion data makes TRL compute the loss on the
completion only, with any stock chat template (no ``{% generation %}`` markers needed).

Facts are truncated from the end, in tokens, so that the whole conversation fits
``max_seq_length``: the instruction before the facts and the question after them always
survive.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from contracts.errors import SpecError

OUTCOMES = {0: "dismissal", 1: "approval"}
LANGUAGE_NAMES = {"de": "German", "fr": "French", "it": "Italian"}
PROMPT_HEAD = (
    "You are given the facts of a case decided by the Swiss Federal Supreme Court"
    " (written in {language}). Predict the court's decision.\n\nFacts:\n"
)
PROMPT_TAIL = "\n\nQuestion: Was the appeal approved or dismissed? Answer with one word: " \
    "approval or dismissal."
TRUNCATION_MARK = " [...]"
# Room for special tokens the chat template adds that are not in the measured overhead.
SAFETY_TOKENS = 8


def build_prompt(facts: str, language: str | None) -> str:
    head = PROMPT_HEAD.format(language=LANGUAGE_NAMES.get(language or "", "its original language"))
    return f"{head}{facts}{PROMPT_TAIL}"


def to_messages(prompt: str, label: int) -> dict[str, list[dict[str, str]]]:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": OUTCOMES[label]}],
    }


class SftFormatter:
    """Turns SJP rows into prompt/completion messages that fit the token budget."""

    def __init__(self, tokenizer: Any, max_seq_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        empty = to_messages(build_prompt("", "de"), 1)
        overhead = len(self._token_ids(empty["prompt"] + empty["completion"]))
        longest_outcome = max(len(tokenizer(word).input_ids) for word in OUTCOMES.values())
        self.facts_budget = max_seq_length - overhead - longest_outcome - SAFETY_TOKENS
        if self.facts_budget < 16:
            raise SpecError(
                f"max_seq_length: {max_seq_length} leaves only {self.facts_budget} tokens "
                "for the facts; raise it"
            )

    def _token_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def truncate_facts(self, facts: str) -> str:
        ids = self.tokenizer(facts, add_special_tokens=False).input_ids
        if len(ids) <= self.facts_budget:
            return facts
        mark = len(self.tokenizer(TRUNCATION_MARK, add_special_tokens=False).input_ids)
        kept = self.tokenizer.decode(ids[: self.facts_budget - mark], skip_special_tokens=True)
        return kept + TRUNCATION_MARK

    def format_row(self, row: dict[str, Any]) -> dict[str, Any]:
        facts = self.truncate_facts(row["text"])
        return to_messages(build_prompt(facts, row.get("language")), int(row["label"]))

    def format(self, cases: Dataset) -> Dataset:
        return cases.map(self.format_row, remove_columns=cases.column_names,
                         desc="formatting cases")
