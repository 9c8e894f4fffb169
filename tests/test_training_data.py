"""SJP data from every source ends in the same schema; formatting fits the token budget."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from contracts.spec import DataSpec
from training.data import DataError, load_cases
from training.formatting import PROMPT_TAIL, SftFormatter
from training.models import resolve_model_path
from training.synthetic import generate_cases


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("tiny-apertus"))


def test_synthetic_cases_say_they_are_synthetic_and_are_seeded() -> None:
    cases = generate_cases(50, seed=3)
    assert cases == generate_cases(50, seed=3)
    assert cases != generate_cases(50, seed=4)
    assert all(c["synthetic"] and c["id"].startswith("synthetic-") for c in cases)
    assert {c["label"] for c in cases} == {0, 1}


def test_local_jsonl_parquet_and_folder(tmp_path) -> None:
    rows = generate_cases(20, seed=1)
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(tmp_path / "more.parquet"))
    assert len(load_cases(DataSpec(source=str(jsonl)))) == 20
    assert len(load_cases(DataSpec(source=str(tmp_path / "more.parquet")))) == 20
    assert len(load_cases(DataSpec(source=str(tmp_path)))) == 40


def test_hub_loader_path_with_a_local_dataset_folder(tmp_path) -> None:
    # The hub id branch goes through datasets.load_dataset, which accepts a local folder.
    rows = generate_cases(12, seed=2)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cases = load_cases(DataSpec(source=f"hub:{tmp_path}", split="train", languages=("de",)))
    assert 0 < len(cases) < 12
    assert set(cases["language"]) == {"de"}


def test_real_sjp_sample(shared_data) -> None:
    cases = load_cases(DataSpec(source=str(shared_data / "sjp_sample" / "cases.jsonl")))
    assert len(cases) == 103
    assert set(cases["label"]) == {0, 1}
    subset = load_cases(DataSpec(source=str(shared_data / "sjp_sample"), max_samples=10), seed=1)
    assert len(subset) == 10


def test_bad_sources_are_refused(tmp_path) -> None:
    with pytest.raises(DataError, match="data.source"):
        load_cases(DataSpec(source=str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"facts": "x", "outcome": 1}))
    with pytest.raises(DataError, match="1 of 1 rows .* are not SJP cases"):
        load_cases(DataSpec(source=str(bad)))
    french = tmp_path / "fr.jsonl"
    french.write_text(json.dumps({**generate_cases(1)[0], "language": "fr"}))
    with pytest.raises(DataError, match="data.languages"):
        load_cases(DataSpec(source=str(french), languages=("de",)))


def test_formatting_keeps_the_question_and_fits_the_budget(tokenizer) -> None:
    formatter = SftFormatter(tokenizer, max_seq_length=256)
    long_case = {"text": "Der Beschwerdeführer rügt. " * 400, "label": 1, "language": "de"}
    row = formatter.format_row(long_case)
    prompt = row["prompt"][0]["content"]
    assert prompt.endswith(PROMPT_TAIL)
    assert "[...]" in prompt
    assert row["completion"][0]["content"] == "approval"
    ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert len(ids) <= 256


def test_too_small_budget_is_refused(tokenizer) -> None:
    with pytest.raises(ValueError, match="max_seq_length"):
        SftFormatter(tokenizer, max_seq_length=64)
