"""LEXam task pieces without a model: extraction, prompt, metrics, data loading, hashing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation.data import (
    DataError,
    eval_set_hash,
    load_questions,
    normalise_record,
    select_questions,
    synthetic_questions,
)
from evaluation.metrics import QuestionResult, compute_metrics, summary
from evaluation.prompt import build_prompt, choice_labels, extract_answer

# -- answer extraction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("I think the answer is B.", 4, None),  # no marker
        ("", 4, None),
        ("Correct Answer: ###C###", 4, "C"),
        ("First ###A###, on reflection ###D###.", 4, "D"),  # several: the last one counts
        ("###B### ... ###B### ... ###A###", 4, "A"),
        ("Correct Answer: ###c###", 4, None),  # lower case is not the official format
        ("###b### then ###C###", 4, "C"),
        ("Correct Answer: ###E###", 4, None),  # E is no choice of a 4-choice question
        ("Correct Answer: ###E###", 8, "E"),
        ("Correct Answer: ###P###", 16, "P"),
        ("Correct Answer: ###Q###", 16, None),
        ("Correct Answer: ###Z###", 26, "Z"),
        ("Correct Answer: ###12###", 32, "12"),  # past the alphabet: the numbers variant
        ("Correct Answer: ###1###", 32, "1"),
        ("Correct Answer: ###32###", 32, "32"),
        ("Correct Answer: ###33###", 32, None),
        ("Correct Answer: ###C###", 32, None),  # letters are no answer of 32 choices
        ("First ###3###, finally ###31###", 32, "31"),
        ("Reasoning...\nCorrect Answer: ###A### because it fits.", 4, "A"),  # text around
        ("Correct Answer: ### A ###", 4, None),  # spaces break the marker
        ("Correct Answer: ##A##", 4, None),
        ("blah###B###blah", 4, "B"),
    ],
)
def test_extract_answer(text: str, n: int, expected: str | None) -> None:
    assert extract_answer(text, n) == expected


def test_choice_labels_cover_32_choices() -> None:
    assert choice_labels(4) == ("A", "B", "C", "D")
    assert choice_labels(16)[-1] == "P"
    labels = choice_labels(32)
    assert labels == tuple(str(i) for i in range(1, 33))


def test_32_choices_use_the_official_numbers_prompt() -> None:
    choices = tuple(f"option {i}" for i in range(32))
    prompt = build_prompt("Which one?", choices, "Staatsrecht")
    assert "only one choice (e.g., 1, 2, 3, etc.) is correct" in prompt
    assert " Correct Answer: ###3### \n" in prompt
    assert "\n1. option 0\n" in prompt and "\n32. option 31\n" in prompt
    four = build_prompt("Which one?", choices[:4], "Staatsrecht")
    assert "(e.g., A, B, C, etc.)" in four and "\nD. option 3\n" in four


def test_prompt_is_the_official_one() -> None:
    prompt = build_prompt("Wer wählt den Bundesrat?", ("Volk", "Bundesversammlung"), "Staatsrecht")
    assert prompt.startswith("You are an expert in Staatsrecht and address legal issues")
    assert "step by step" in prompt and " Correct Answer: ###C### \n" in prompt
    body = "Question:\n Wer wählt den Bundesrat?\nA. Volk\nB. Bundesversammlung\n\nAnswer:"
    assert body in prompt
    assert prompt.endswith("Answer:")


# -- metrics --------------------------------------------------------------------------------


def _result(gold: str, parsed: str | None, loglik: str | None = None, lang: str = "de",
            area: str = "Public", n: int = 4, text: str | None = "...") -> QuestionResult:
    return QuestionResult(prompt_id=f"q-{gold}-{parsed}", language=lang, area=area,
                          n_choices=n, gold=gold, answer_text=text, parsed=parsed,
                          loglik_choice=loglik)


def test_metrics_separate_format_from_knowledge() -> None:
    results = [
        _result("A", "A", "A"),            # right
        _result("B", "C", "B"),            # parsed, wrong; loglik right
        _result("C", None, "C"),           # no marker: wrong officially
        _result("D", None, "A", lang="en", area="Private"),
    ]
    metrics = compute_metrics(results)
    assert metrics["lexam/accuracy"] == pytest.approx(0.25)
    assert metrics["lexam/format_rate"] == pytest.approx(0.5)
    assert metrics["lexam/parsed_accuracy"] == pytest.approx(0.5)
    assert metrics["lexam/loglik_accuracy"] == pytest.approx(0.75)
    assert metrics["lexam/chance"] == pytest.approx(0.25)
    assert metrics["lexam/n_questions"] == 4
    assert metrics["lexam/accuracy.lang_de"] == pytest.approx(1 / 3)
    assert metrics["lexam/accuracy.lang_en"] == 0.0
    assert metrics["lexam/loglik_accuracy.area_public"] == pytest.approx(1.0)
    assert metrics["lexam/n_questions.area_private"] == 1


def test_parsed_accuracy_is_nan_when_nothing_parses() -> None:
    metrics = summary([_result("A", None), _result("B", None)])
    assert metrics["accuracy"] == 0.0 and metrics["format_rate"] == 0.0
    assert math.isnan(metrics["parsed_accuracy"])
    assert "loglik_accuracy" not in metrics


def test_chance_follows_the_number_of_choices() -> None:
    metrics = summary([_result("A", "A", n=4), _result("A", "A", n=8)])
    assert metrics["chance"] == pytest.approx((0.25 + 0.125) / 2)


def test_loglik_only_run_has_no_generative_metrics() -> None:
    metrics = summary([_result("A", None, "A", text=None)])
    assert "accuracy" not in metrics and metrics["loglik_accuracy"] == 1.0


# -- data -----------------------------------------------------------------------------------


def test_both_schemas_load_the_same(tmp_path: Path) -> None:
    new = {"id": "x1", "question": "Q?", "choices": ["a", "b", "c", "d"], "gold": 2,
           "course": "Law", "language": "en", "area": "Public"}
    old = {"Id": "x1", "Question": "Q?", "Choices": "['a', 'b', 'c', 'd']", "Gold": 2,
           "Course": "Law", "Language": "en", "Area": "Public"}
    assert normalise_record(new, 0) == normalise_record(old, 0)
    letter = dict(old, Gold="C")
    assert normalise_record(letter, 0).gold == 2
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(new) + "\n" + json.dumps(dict(old, Id="x2")) + "\n")
    assert [q.id for q in load_questions(str(tmp_path), 4)] == ["x1", "x2"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "Q", "choices": ["a", "b"], "gold": 5}, "'gold' = 5 is outside"),
        ({"question": "Q", "choices": "not a list", "gold": 0}, "'choices' is not a list"),
        ({"choices": ["a", "b"], "gold": 0}, "'question'"),
        ({"question": "Q", "choices": ["a", "b"], "gold": "zz9"}, "'gold'"),
    ],
)
def test_bad_records_name_the_field(record: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        normalise_record(record, 3)


def test_choice_count_must_match(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "Q", "choices": list("abcd"),
                                "gold": 0}) + "\n")
    with pytest.raises(DataError, match="has 4 choices but --choices is 8"):
        load_questions(str(path), 8)


def test_subset_is_seeded_and_filtered() -> None:
    questions = synthetic_questions(60, 4, seed=1)
    first = select_questions(questions, 10, seed=3, languages=["en"])
    assert len(first) == 10 and {q.language for q in first} == {"en"}
    assert first == select_questions(questions, 10, seed=3, languages=["en"])
    assert first != select_questions(questions, 10, seed=4, languages=["en"])
    with pytest.raises(DataError, match="languages"):
        select_questions(questions, languages=["xx"])


def test_synthetic_questions_have_the_requested_choices() -> None:
    for n in (4, 8, 16, 32):
        questions = synthetic_questions(5, n)
        assert all(q.n_choices == n and len(set(q.choices)) == n for q in questions)
        assert all(q.id.startswith("synthetic-") for q in questions)


def test_eval_hash_changes_with_questions_and_options() -> None:
    questions = synthetic_questions(8)
    base = eval_set_hash(questions, {"max_new_tokens": 64})
    assert base == eval_set_hash(list(questions), {"max_new_tokens": 64})
    assert base != eval_set_hash(questions[:-1], {"max_new_tokens": 64})
    assert base != eval_set_hash(questions, {"max_new_tokens": 65})


def test_shared_lexam_file_loads(shared_data: Path) -> None:
    path = shared_data / "lexam" / "mcq_4_choices_test.jsonl"
    if not path.is_file():
        pytest.skip("shared LEXam file absent")
    questions = load_questions(str(path), 4)
    assert len(questions) == 1660
    assert {q.language for q in questions} == {"de", "en"}
    assert {q.area for q in questions} >= {"Public", "Private", "Criminal"}


def test_lighteval_scorer_needs_the_vllm_backend() -> None:
    from contracts.errors import SpecError
    from contracts.evaluation import parse_eval_spec

    spec = parse_eval_spec({"model": "tiny-apertus-32", "sweep_id": "s", "backend": "vllm",
                            "scorer": "lighteval"})
    assert spec.scorer == "lighteval"
    assert parse_eval_spec({"model": "tiny-apertus", "sweep_id": "s"}).scorer == "project"
    with pytest.raises(SpecError, match="scorer"):
        parse_eval_spec({"model": "tiny-apertus", "sweep_id": "s", "scorer": "lighteval"})
    with pytest.raises(SpecError, match="scorer"):
        parse_eval_spec({"model": "tiny-apertus", "sweep_id": "s", "scorer": "x; id"})
