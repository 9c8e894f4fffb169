"""The transformers backend on the real tiny Apertus: batching must not change answers or
scores, adapters must switch cleanly, and the evaluation loop must fill every metric."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.backends.chat import render
from evaluation.backends.transformers_backend import TransformersBackend, length_batches
from evaluation.data import synthetic_questions
from evaluation.prompt import ANSWER_PREFIX, build_prompt, choice_labels
from evaluation.runner import EvalOptions, build_eval_set, evaluate
from training.models import resolve_model_path


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return resolve_model_path("tiny-apertus")


@pytest.fixture(scope="module")
def backend(tiny_path: str) -> TransformersBackend:
    return TransformersBackend(tiny_path, dtype="float32", batch_size=4, progress=False)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    # Different lengths, so batches need padding.
    return [build_prompt(q.question * (1 + i % 3), q.choices, q.course)
            for i, q in enumerate(synthetic_questions(6, 4))]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_path: str) -> Path:
    """A real LoRA adapter with non-zero weights (so it changes the model's outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    config = LoraConfig(r=4, lora_alpha=32, target_modules="all-linear",
                        init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def _full_sequence_score(backend: TransformersBackend, prompt: str, label: str) -> float:
    """The scoring rule computed the plain way: one forward pass over prompt + label###."""
    tok = backend.tokenizer
    prefix = tok(render(tok, prompt, ANSWER_PREFIX), add_special_tokens=False)["input_ids"]
    continuation = (tok(label, add_special_tokens=False)["input_ids"]
                    + tok("###", add_special_tokens=False)["input_ids"])
    ids = torch.tensor([prefix + continuation])
    with torch.inference_mode():
        logprobs = torch.log_softmax(backend.model(input_ids=ids).logits.float(), -1)[0]
    values = [logprobs[len(prefix) - 1 + j, t].item() for j, t in enumerate(continuation)]
    return sum(values) / len(values)


def test_cached_scores_equal_full_sequence_scores(backend: TransformersBackend,
                                                  prompts: list[str]) -> None:
    labels = [choice_labels(4)] * len(prompts)
    scores = backend.choice_logprobs(prompts, labels)
    for prompt, row in zip(prompts, scores, strict=True):
        expected = [_full_sequence_score(backend, prompt, label) for label in choice_labels(4)]
        assert row == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("n_choices", [8, 16, 32])
def test_every_label_of_8_16_32_choices_is_scored_in_full(backend: TransformersBackend,
                                                          n_choices: int) -> None:
    """32 choices use the official numbers variant: labels 1..32, some of two tokens."""
    question = synthetic_questions(1, n_choices)[0]
    prompt = build_prompt(question.question, question.choices, question.course)
    labels = choice_labels(n_choices)
    (row,) = backend.choice_logprobs([prompt], [labels])
    assert len(row) == n_choices and all(math.isfinite(x) for x in row)
    expected = [_full_sequence_score(backend, prompt, label) for label in labels]
    assert row == pytest.approx(expected, abs=1e-4)
    if n_choices == 32:
        tok = backend.tokenizer
        lengths = {len(tok(label, add_special_tokens=False)["input_ids"]) for label in labels}
        assert len(lengths) > 1, "the test wants labels of different token lengths"


def test_generation_batches_do_not_pad_short_prompts_to_a_long_one() -> None:
    # The 8 LEXam prompts of the demo: one long question, seven of about 600 tokens.
    lengths = [612, 2077, 453, 623, 536, 653, 603, 625]
    assert list(length_batches(lengths, 8)) == [[1], [5, 7, 3, 0, 6, 4, 2]]
    assert list(length_batches(lengths, 3)) == [[1], [5, 7, 3], [0, 6, 4], [2]]
    assert list(length_batches([5000, 4000, 3000], 8, max_tokens=8192)) == [[0], [1, 2]]
    batches = list(length_batches(lengths, 8))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_batched_generation_equals_one_at_a_time(tiny_path: str, backend: TransformersBackend,
                                                 prompts: list[str]) -> None:
    single = TransformersBackend(tiny_path, dtype="float32", batch_size=1, progress=False)
    assert backend.generate(prompts, 12) == single.generate(prompts, 12)


def test_adapters_switch_and_base_is_untouched(tiny_path: str, random_adapter: Path,
                                               prompts: list[str]) -> None:
    plain = TransformersBackend(tiny_path, dtype="float32", progress=False)
    shared = TransformersBackend(tiny_path, dtype="float32", progress=False)
    shared.add_adapter("run-a", random_adapter)
    with_file = TransformersBackend(tiny_path, random_adapter, dtype="float32", progress=False)
    labels = [choice_labels(4)] * 3

    def scores(backend: TransformersBackend) -> list[float]:
        return [x for row in backend.choice_logprobs(prompts[:3], labels) for x in row]

    base_scores = scores(plain)
    shared.use("run-a")
    adapted = scores(shared)
    assert adapted == pytest.approx(scores(with_file), abs=1e-5)
    assert adapted != pytest.approx(base_scores, abs=1e-3)
    shared.use(None)
    assert scores(shared) == pytest.approx(base_scores, abs=1e-5)
    with pytest.raises(KeyError):
        shared.use("missing")


def test_evaluate_fills_metrics_and_details(backend: TransformersBackend) -> None:
    options = EvalOptions(data="synthetic", synthetic_size=10, max_new_tokens=6)
    eval_set = build_eval_set(options)
    report = evaluate(backend, eval_set, options, model="tiny-apertus")
    metrics = report.metrics
    for key in ("accuracy", "format_rate", "parsed_accuracy", "loglik_accuracy", "chance",
                "n_questions"):
        assert f"lexam/{key}" in metrics
    assert metrics["lexam/n_questions"] == 10 and metrics["lexam/chance"] == 0.25
    details = report.details()
    assert {"prompt_id", "answer_text", "parsed", "gold", "correct"} <= set(details[0])
    assert metrics["lexam/loglik_accuracy"] == pytest.approx(
        sum(bool(d["loglik_correct"]) for d in details) / 10)


def test_cli_writes_json_and_rejects_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env_cmd = [sys.executable, "-m", "evaluation", "--model", "tiny-apertus", "--data",
               "synthetic", "--max-questions", "4", "--no-generate", "--output-json", str(out)]
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300,
                          env={**_env_without_mlflow()})
    assert done.returncode == 0, done.stderr
    payload = json.loads(out.read_text())
    assert payload["metrics"]["lexam/n_questions"] == 4 and len(payload["details"]) == 4
    assert "lexam/accuracy" not in payload["metrics"]  # nothing generated
    bad = subprocess.run(
        [sys.executable, "-m", "evaluation", "--model", "tiny-apertus", "--data",
         "x;rm -rf /", "--output-json", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=120, env=_env_without_mlflow())
    assert bad.returncode == 2 and "data:" in bad.stderr
    helptext = subprocess.run([sys.executable, "-m", "evaluation", "--help"],
                              capture_output=True, text=True, timeout=60)
    assert "--adapter" in helptext.stdout and "--max-questions" in helptext.stdout


def _env_without_mlflow() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
