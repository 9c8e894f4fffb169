"""LEXam multiple-choice questions: loading, subsetting and the evaluation set's identity.

Sources: the hub (``hub:LEXam-Benchmark/LEXam``, configs ``mcq_{4,8,16,32}_choices``), a
local JSONL file (or a folder holding ``test.jsonl`` / ``mcq_N_choices_test.jsonl``) in the
same schema, or ``synthetic`` (generated questions for tests and offline demos). Both the
current lower-case schema (``question, choices, gold``) and the older capitalised one
(``Question, Choices, Gold, Course``; choices possibly as a Python-literal string) load.

The evaluation set hash covers the selected questions and every option that changes the
numbers, so the nightly DAG can tell "already evaluated on exactly this" from "stale".
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import describe_errors
from contracts.evaluation import LEXAM_HUB_REPO as HUB_REPO

CHOICE_COUNTS = (4, 8, 16, 32)


class DataError(ValueError):
    """Bad evaluation data; the message names the question and field."""


class LexamQuestion(BaseModel):
    """One multiple-choice question in the normalised (lower-case) schema."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    question: str = Field(min_length=1)
    choices: tuple[str, ...] = Field(min_length=2)
    gold: int = Field(ge=0)
    course: str = ""
    language: str = ""
    area: str = ""
    jurisdiction: str = ""

    @property
    def n_choices(self) -> int:
        return len(self.choices)


# Older releases (the xlsx-derived files, the first lighteval community task).
_FIELD_ALIASES = {
    "Question": "question", "Choices": "choices", "Gold": "gold", "Course": "course",
    "Language": "language", "Area": "area", "Jurisdiction": "jurisdiction", "Id": "id",
    "ID": "id", "answer": "gold", "Answer": "gold",
}


def normalise_record(raw: Mapping[str, Any], index: int) -> LexamQuestion:
    """One raw record (either schema) as a LexamQuestion; errors name the field."""
    if not isinstance(raw, Mapping):
        raise DataError(f"question {index}: must be a JSON object, not {type(raw).__name__}")
    record: dict[str, Any] = {}
    for key, value in raw.items():
        record[_FIELD_ALIASES.get(key, key)] = value
    where = f"question {record.get('id', index)!s}"
    if "question" not in record:
        raise DataError(f"{where}: field 'question' (or 'Question') is missing")
    choices = record.get("choices")
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: field 'choices' is not a list") from None
    if not isinstance(choices, list | tuple) or not all(
            isinstance(choice, str | int | float) and not isinstance(choice, bool)
            for choice in choices):
        raise DataError(f"{where}: field 'choices' must be a list of strings")
    record["choices"] = tuple(str(choice) for choice in choices)
    gold = record.get("gold")
    if isinstance(gold, str) and gold.strip().isalpha():
        gold = _letter_index(gold.strip())
    elif isinstance(gold, str) and gold.strip().isdigit():
        gold = int(gold.strip())
    if not isinstance(gold, int) or isinstance(gold, bool):
        raise DataError(
            f"{where}: field 'gold' must be a whole index or a letter, got {gold!r}")
    record["gold"] = gold
    if not 0 <= record["gold"] < len(record["choices"]):
        raise DataError(
            f"{where}: field 'gold' = {record['gold']} is outside the "
            f"{len(record['choices'])} choices"
        )
    record["id"] = str(record.get("id", index))
    for key in ("course", "language", "area", "jurisdiction"):
        record[key] = "" if record.get(key) is None else str(record[key])
    try:
        return LexamQuestion.model_validate(record)
    except ValidationError as error:
        raise DataError(f"{where}: {'; '.join(describe_errors(error).splitlines())}") from None


def _letter_index(letter: str) -> int:
    import string

    if len(letter) != 1 or letter.upper() not in string.ascii_uppercase:
        raise DataError(f"field 'gold': {letter!r} is not a choice letter")
    return string.ascii_uppercase.index(letter.upper())


def _local_file(path: Path, choices: int) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in (f"mcq_{choices}_choices_test.jsonl", "test.jsonl",
                     f"mcq_{choices}_choices/test.jsonl"):
            if (path / name).is_file():
                return path / name
        raise DataError(
            f"data: {path} holds neither test.jsonl nor mcq_{choices}_choices_test.jsonl"
        )
    raise DataError(f"data: {path} does not exist")


def read_records(source: str, choices: int = 4) -> list[dict[str, Any]]:
    """Raw records from a local file/folder or the hub (``hub:REPO``)."""
    if source.startswith("hub:"):
        import datasets

        repo = source.removeprefix("hub:") or HUB_REPO
        try:
            dataset = datasets.load_dataset(repo, f"mcq_{choices}_choices", split="test")
        except Exception as error:  # noqa: BLE001 - any loader error means "cannot load"
            first = str(error).splitlines()[0][:300] if str(error) else ""
            raise DataError(f"data: cannot load {repo!r} (mcq_{choices}_choices) through the "
                            f"hub: {type(error).__name__}: {first} (offline machines need a "
                            "local JSONL copy)") from None
        return [dict(row) for row in dataset]
    path = _local_file(Path(source), choices)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"data: {path} is not UTF-8 text") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as error:
            message = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            raise DataError(f"data: {path}:{number} is not JSON ({message})") from None
        if not isinstance(record, dict):
            raise DataError(f"data: {path}:{number} must be a JSON object, not "
                            f"{type(record).__name__}")
        records.append(record)
    return records


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a question can hold")


def load_questions(source: str, choices: Literal[4, 8, 16, 32] = 4,
                   synthetic_size: int = 64, seed: int = 0) -> list[LexamQuestion]:
    """All questions of one source, checked to have exactly ``choices`` options."""
    if source == "synthetic":
        return synthetic_questions(synthetic_size, choices, seed)
    questions = [normalise_record(raw, i) for i, raw in enumerate(read_records(source, choices))]
    for question in questions:
        if question.n_choices != choices:
            raise DataError(
                f"question {question.id}: has {question.n_choices} choices but --choices is "
                f"{choices}"
            )
    if not questions:
        raise DataError(f"data: {source} holds no questions")
    return questions


def select_questions(questions: list[LexamQuestion], max_questions: int | None = None,
                     seed: int = 0, languages: Iterable[str] | None = None
                     ) -> list[LexamQuestion]:
    """Language filter, then a seeded sample (order kept) of at most ``max_questions``."""
    chosen = list(questions)
    if languages:
        wanted = set(languages)
        chosen = [q for q in chosen if q.language in wanted]
        if not chosen:
            raise DataError(f"languages: no question in {sorted(wanted)}")
    if max_questions is not None and max_questions < len(chosen):
        picked = sorted(random.Random(seed).sample(range(len(chosen)), max_questions))
        chosen = [chosen[i] for i in picked]
    return chosen


def eval_set_hash(questions: Iterable[LexamQuestion], options: Mapping[str, Any]) -> str:
    """16 hex chars over the questions' content and the options that change results."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dict(options), sort_keys=True, default=str).encode())
    for question in questions:
        digest.update(json.dumps(
            [question.id, question.question, list(question.choices), question.gold],
            ensure_ascii=False,
        ).encode())
    return digest.hexdigest()[:16]


# -- generated questions (no data needed) ---------------------------------------------------

_SYNTHETIC = {
    "de": [
        ("Staatsrecht", "Public", "Welche Behörde ist für die Wahl des Bundesrates zuständig?",
         "die Vereinigte Bundesversammlung", ["das Bundesgericht", "der Nationalrat allein",
                                              "die Kantonsregierungen", "das Volk"]),
        ("Strafrecht", "Criminal", "Ab welchem Alter ist eine Person in der Schweiz "
         "strafmündig?", "ab 10 Jahren", ["ab 7 Jahren", "ab 14 Jahren", "ab 16 Jahren",
                                          "ab 18 Jahren"]),
        ("Privatrecht", "Private", "Wie viele Zeugen braucht ein öffentliches Testament?",
         "zwei", ["keinen", "einen", "drei", "vier"]),
    ],
    "en": [
        ("Constitutional Law", "Public", "Which body elects the Swiss Federal Council?",
         "the United Federal Assembly", ["the Federal Supreme Court", "the cantons",
                                         "the National Council alone", "the people"]),
        ("International Law", "Interdisciplinary", "Where does the International Court of "
         "Justice sit?", "The Hague", ["Geneva", "New York", "Strasbourg", "Luxembourg"]),
        ("Contract Law", "Private", "What does a valid contract require?",
         "mutual assent of the parties", ["a notary in every case", "a written form always",
                                          "a court's approval", "a witness"]),
    ],
}


def synthetic_questions(n: int, choices: int = 4, seed: int = 0) -> list[LexamQuestion]:
    """Deterministic LEXam-shaped questions; ids start with ``synthetic-``."""
    rng = random.Random(seed)
    pool = [(lang, item) for lang, items in _SYNTHETIC.items() for item in items]
    questions = []
    for index in range(n):
        language, (course, area, text, right, wrong) = pool[index % len(pool)]
        distractors = [wrong[i % len(wrong)] + ("" if i < len(wrong) else f" ({i})")
                       for i in range(choices - 1)]
        options = [right, *distractors]
        rng.shuffle(options)
        questions.append(LexamQuestion(
            id=f"synthetic-{index:05d}", question=f"{text} [{index}]", choices=tuple(options),
            gold=options.index(right), course=course, language=language, area=area,
            jurisdiction="Swiss",
        ))
    return questions
