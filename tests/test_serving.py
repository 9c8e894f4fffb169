"""Serving: the vLLM command line (vLLM itself is CUDA-only) and the endpoint client against
a real OpenAI-compatible server that runs here, ``transformers serve``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from evaluation.backends.endpoint import EndpointBackend
from evaluation.backends.transformers_backend import TransformersBackend
from evaluation.prompt import build_prompt, choice_labels
from evaluation.runner import EvalOptions, build_eval_set, evaluate
from evaluation.serving import (
    LoraModule,
    ManagedServer,
    ServerError,
    VllmServerConfig,
    free_port,
    max_lora_rank,
    transformers_serve_command,
)
from training.models import resolve_model_path


def _config(*ranks: int) -> VllmServerConfig:
    adapters = tuple(LoraModule(name=f"run-r{r}", path=f"/scratch/adapters/r{r}", rank=r)
                     for r in ranks)
    return VllmServerConfig(model="/models/Apertus-8B", port=8123, adapters=adapters)


def test_one_server_holds_every_adapter() -> None:
    cmd = _config(1, 16, 64).command()
    assert cmd[:3] == ["vllm", "serve", "/models/Apertus-8B"]
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--max-loras") + 1] == "3"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    start = cmd.index("--lora-modules") + 1
    assert cmd[start:start + 3] == ["run-r1=/scratch/adapters/r1",
                                    "run-r16=/scratch/adapters/r16",
                                    "run-r64=/scratch/adapters/r64"]
    assert cmd[cmd.index("--served-model-name") + 1] == "base"
    assert cmd[cmd.index("--port") + 1] == "8123"


def test_base_or_full_model_server_has_no_lora_flags() -> None:
    cmd = _config().command()
    assert "--enable-lora" not in cmd and "--lora-modules" not in cmd


@pytest.mark.parametrize(("ranks", "expected"),
                         [([1, 2, 4], 8), ([8], 8), ([9], 16), ([256, 300], 320), ([512], 512)])
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
        {"model": "/m", "adapters": [{"name": "a b", "path": "/p", "rank": 8}]},
        {"model": "/m", "adapters": [{"name": "a", "path": "/p $(id)", "rank": 8}]},
        {"model": "/m", "adapters": [{"name": "base", "path": "/p", "rank": 8}]},
        {"model": "/m", "adapters": [{"name": "a", "path": "/p", "rank": 0}]},
    ],
)
def test_injection_and_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        VllmServerConfig.model_validate(bad)


def test_command_survives_a_shell_round_trip() -> None:
    cmd = _config(8, 32).command()
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
