"""Serving without starting vLLM: its command line, LoRA slots and their memory, and the
endpoint client against ``transformers serve`` (tests/test_vllm_serving.py starts vLLM)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.presets import get_preset
from evaluation.backends.endpoint import EndpointBackend
from evaluation.backends.transformers_backend import TransformersBackend
from evaluation.prompt import build_prompt, choice_labels
from evaluation.runner import EvalOptions, build_eval_set, evaluate
from evaluation.serving import (
    ManagedServer,
    ServerError,
    VllmServerConfig,
    free_port,
    lora_slot_bytes,
    max_lora_rank,
    transformers_serve_command,
)
from training.models import resolve_model_path


def _config(max_rank: int | None = None) -> VllmServerConfig:
    return VllmServerConfig(model="/models/Apertus-8B", port=8123, max_lora_rank=max_rank)


def test_server_command_runs_vllm_from_its_environment() -> None:
    cmd = _config(64).command(python="/opt/vllm/bin/python")
    assert cmd[:5] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                       "--model", "/models/Apertus-8B"]
    assert cmd[cmd.index("--served-model-name") + 1] == "base"
    assert cmd[cmd.index("--port") + 1] == "8123"


def test_lora_slots_are_bounded_whatever_the_sweep_size() -> None:
    """Adapters are loaded at run time, one at a time: one accelerator slot, not one per
    adapter; the rank covers the largest adapter."""
    cmd = _config(300).command(python="python")
    assert "--enable-lora" in cmd and "--lora-modules" not in cmd
    assert cmd[cmd.index("--max-loras") + 1] == "1"
    assert cmd[cmd.index("--max-cpu-loras") + 1] == "2"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "320"
    assert _config(300).env()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_base_or_full_model_server_has_no_lora_flags() -> None:
    cmd = _config().command(python="python")
    assert "--enable-lora" not in cmd and "--max-loras" not in cmd
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in _config().env()


def test_lora_memory_of_the_reference_sweep_on_apertus_8b() -> None:
    """What one slot costs, from the architecture in configs/models.yaml: A (r x in) and
    B (out x r) for q, k, v, o, up, down in each of the 32 layers, bf16."""
    preset = get_preset("apertus-8b")
    arch = preset.architecture
    assert arch is not None
    hidden, inter, heads = arch["hidden_size"], arch["intermediate_size"], \
        arch["num_attention_heads"]
    kv = arch["num_key_value_heads"] * hidden // heads
    per_layer = (hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inter) * 2
    assert per_layer * arch["num_hidden_layers"] == preset.lora_params_per_rank
    slot = lora_slot_bytes(preset.lora_params_per_rank, 512)
    assert slot == 2_550_136_832  # 2.375 GiB per rank-512 slot
    assert 46 * slot / 2**30 == pytest.approx(109.25)  # before: one slot per adapter
    assert 1 * slot / 2**30 == pytest.approx(2.375)  # after: --max-loras 1


@pytest.mark.parametrize(("ranks", "expected"),
                         [([1], 1), ([1, 2, 4], 8), ([8], 8), ([9], 16), ([256, 300], 320),
                          ([512], 512)])
def test_max_lora_rank_is_the_smallest_accepted_cover(ranks: list[int], expected: int) -> None:
    assert max_lora_rank(ranks) == expected


def test_rank_beyond_vllm_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        max_lora_rank([1024])


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "/models/x; rm -rf /"},
        {"model": "--trust-remote-code"},
        {"model": "/m", "served_name": "a b"},
        {"model": "/m", "dtype": "float32; id"},
        {"model": "/m", "max_loras": 0},
    ],
)
def test_injection_and_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        VllmServerConfig.model_validate(bad)


def test_command_survives_a_shell_round_trip() -> None:
    cmd = _config(32).command(python="/opt/vllm/bin/python")
    assert shlex.split(shlex.join(cmd)) == cmd


def test_server_that_dies_reports_its_output(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
    with pytest.raises(ServerError, match="no GPU here"):
        ManagedServer(command, f"http://127.0.0.1:{free_port()}", tmp_path / "log",
                      startup_timeout_s=30).start()


def test_endpoint_client_against_transformers_serve(tmp_path: Path) -> None:
    """A real OpenAI-compatible server on CPU: same answers as the in-process backend."""
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    model = resolve_model_path("tiny-apertus")
    port = free_port()
    server = ManagedServer(transformers_serve_command(model, port), f"http://127.0.0.1:{port}",
                           tmp_path / "serve.log", startup_timeout_s=180)
    options = EvalOptions(data="synthetic", synthetic_size=4, max_new_tokens=8)
    eval_set = build_eval_set(options)
    prompts = [build_prompt(q.question, q.choices, q.course) for q in eval_set.questions]
    local = TransformersBackend(model, dtype="float32", progress=False)
    with server:
        remote = EndpointBackend(server.base_url, model, model, concurrency=2, progress=False,
                                 token_ids=False)
        answers = remote.generate(prompts, 8)
        # transformers serve returns no log-probabilities: the client says so.
        assert remote.choice_logprobs(prompts, [choice_labels(4)] * 4) is None
        report = evaluate(remote, eval_set, options, model="tiny-apertus",
                          backend_name="endpoint")
    assert server.process is not None and server.process.poll() is not None  # stopped
    assert answers == local.generate(prompts, 8)
    assert report.metrics["lexam/n_questions"] == 4
    assert "lexam/format_rate" in report.metrics
    assert "lexam/loglik_accuracy" not in report.metrics
