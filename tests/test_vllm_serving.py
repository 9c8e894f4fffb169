"""The real serving path: a vLLM server (CPU build, .venv-vllm) on the small Apertus with
head size 32, its LoRA adapters loaded at run time, evaluated through the sweep job and
lighteval's own runner, checked against the in-process transformers backend.

One server is started for the module (about 75 s on 2 cores) and serves every check; the
last test kills it to check what a job says when its server dies. The single-model CLI
starts a server of its own. Skipped where the serving environment is absent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from contracts.evaluation import EvalJobSpec, EvalOptions
from contracts.spec import RunSpec
from evaluation.backends.endpoint import EndpointBackend
from evaluation.backends.transformers_backend import TransformersBackend
from evaluation.data import synthetic_questions
from evaluation.job import TAG_EVAL_ERROR, NotEvaluated, run_eval_job
from evaluation.prompt import build_prompt, choice_labels, extract_answer
from evaluation.serving import (
    LOCAL_VLLM_ENV,
    VLLM_PYTHON_ENV,
    ManagedServer,
    ServerError,
    VllmServerConfig,
    free_port,
)
from training.job import run_training
from training.models import resolve_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.environ.get(VLLM_PYTHON_ENV) or LOCAL_VLLM_ENV.exists()),
                       reason=".venv-vllm is not set up (scripts/bootstrap-env.sh)"),
]

MODEL = "tiny-apertus-32"
SWEEP = "vllm-e2e"
REPO = Path(__file__).resolve().parent.parent
SHARED_LEXAM = REPO.parent / "shared" / "data" / "lexam" / "mcq_4_choices_test.jsonl"
N_QUESTIONS = 6
FAST = {"model": MODEL, "method": "lora", "max_steps": 3, "per_device_batch": 4,
        "grad_accum": 1, "max_seq_length": 256, "bf16": "off", "save_steps": 100,
        "data": {"source": "synthetic", "synthetic_size": 16}, "sweep_id": SWEEP}


def _text(answer: str | None) -> str:
    return (answer or "").rstrip("\ufffd")


def _options(**changes: object) -> EvalOptions:
    data = str(SHARED_LEXAM) if SHARED_LEXAM.is_file() else "synthetic"
    settings = {"data": data, "max_questions": N_QUESTIONS, "max_new_tokens": 8, **changes}
    return EvalOptions(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base_path() -> str:
    return resolve_model_path(MODEL)


@pytest.fixture(scope="module")
def runs(module_mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two trained LoRA runs of the sweep (lr high enough to move the weights) and one
    finished run whose adapter is broken (its weights file is garbage)."""
    out = tmp_path_factory.mktemp("runs")
    good = [run_training(RunSpec(**FAST, rank=rank, lr=5e-2, output_dir=str(out)))
            for rank in (4, 8)]
    assert all(o.outcome == "finished" and o.model_uri for o in good)
    broken = tmp_path_factory.mktemp("broken-adapter")
    config = {"r": 8, "lora_alpha": 32, "peft_type": "LORA", "target_modules": ["q_proj"],
              "task_type": "CAUSAL_LM"}
    (broken / "adapter_config.json").write_text(json.dumps(config))
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lora-regret").experiment_id
    bad = client.create_run(experiment, run_name=f"{MODEL}-lora-r8-broken", tags={
        "sweep_id": SWEEP, "model": MODEL, "method": "lora", "rank": "8",
        "outcome": "finished", "registered_model_uri": str(broken)})
    client.set_terminated(bad.info.run_id, "FINISHED")
    return {"good": good, "bad": bad.info.run_id}


@pytest.fixture(scope="module")
def server(base_path: str, tmp_path_factory: pytest.TempPathFactory):
    config = VllmServerConfig(model=base_path, port=free_port(), dtype="float32",
                              max_lora_rank=8, max_model_len=4096)
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with ManagedServer(config.command(), config.base_url, log, env=config.env(),
                       startup_timeout_s=600) as started:
        yield started


@pytest.fixture(scope="module")
def vllm_reports(runs: dict, server: ManagedServer, tmp_path_factory: pytest.TempPathFactory):
    spec = EvalJobSpec(model=MODEL, sweep_id=SWEEP, backend="vllm", dtype="float32",
                       options=_options())
    with pytest.raises(NotEvaluated) as partial:  # the broken adapter; the others are done
        run_eval_job(spec, tmp_path_factory.mktemp("results"), server=server)
    assert partial.value.failures == [f"{MODEL}-lora-r8-broken"]
    return partial.value.reports


def test_sweep_job_evaluates_every_adapter_through_one_server(
        runs: dict, vllm_reports: list, tmp_path: Path) -> None:
    assert len(vllm_reports) == 3  # baseline + both good adapters; the broken one reported
    client = MlflowClient()
    evaluated = {r.run_id for r in vllm_reports}
    assert {o.run_id for o in runs["good"]} <= evaluated
    for run_id in evaluated:
        run = client.get_run(run_id)
        for key in ("accuracy", "format_rate", "loglik_accuracy", "chance", "n_questions"):
            assert f"lexam/{key}" in run.data.metrics, (run_id, key)
        assert run.data.metrics["lexam/n_questions"] == N_QUESTIONS
        assert run.data.tags["lexam_backend"] == "vllm"
        assert run.data.tags["lexam_scorer"] == "project"
        local = client.download_artifacts(run_id, "lexam/details.json", str(tmp_path / run_id))
        details = json.loads(Path(local).read_text())
        assert len(details) == N_QUESTIONS and all(d["loglik_scores"] for d in details)
    # The adapters were applied: each scores the letters differently from the base.
    scores = {r.adapter or "base": [x.loglik_scores for x in r.results] for r in vllm_reports}
    assert len({json.dumps(v) for v in scores.values()}) == 3
    # The broken adapter is named, on its run and in no report.
    error = client.get_run(runs["bad"]).data.tags[TAG_EVAL_ERROR]
    assert "did not load" in error and "broken" not in evaluated


def test_vllm_and_transformers_backends_agree(vllm_reports: list, tmp_path: Path) -> None:
    """Same questions, same greedy answers and letter choices; scores within 1e-3 nats."""
    spec = EvalJobSpec(model=MODEL, sweep_id=SWEEP, backend="transformers", dtype="float32",
                       options=_options())
    with pytest.raises(NotEvaluated) as partial:  # the broken adapter, on this backend too
        run_eval_job(spec, tmp_path)
    local = {r.run_id: r for r in partial.value.reports}
    for served in vllm_reports:
        mine = local[served.run_id]
        # The random model's byte-level tokens can end inside a UTF-8 character: vLLM
        # holds the incomplete bytes back, transformers decodes them as U+FFFD.
        assert [_text(r.answer_text) for r in served.results] == \
            [_text(r.answer_text) for r in mine.results]
        assert [r.parsed for r in served.results] == [r.parsed for r in mine.results]
        assert [r.loglik_choice for r in served.results] == \
            [r.loglik_choice for r in mine.results]
        for a, b in zip(served.results, mine.results, strict=True):
            assert a.loglik_scores == pytest.approx(b.loglik_scores, abs=1e-3)


@pytest.mark.parametrize("n_choices", [8, 16, 32])
def test_8_16_32_choice_scoring_agrees_on_both_backends(
        server: ManagedServer, base_path: str, n_choices: int) -> None:
    questions = synthetic_questions(2, n_choices, seed=n_choices)
    prompts = [build_prompt(q.question, q.choices, q.course) for q in questions]
    labels = [choice_labels(n_choices)] * len(prompts)
    if n_choices == 32:
        assert labels[0][-1] == "32" and "###3###" in prompts[0]  # the numbers variant
    remote = EndpointBackend(server.base_url, "base", base_path, progress=False)
    local = TransformersBackend(base_path, dtype="float32", progress=False)
    served, mine = remote.choice_logprobs(prompts, labels), local.choice_logprobs(prompts, labels)
    assert served is not None
    for a, b in zip(served, mine, strict=True):
        assert len(a) == n_choices
        assert a == pytest.approx(b, abs=1e-3)


def test_lighteval_scores_an_adapter_like_the_project(
        runs: dict, server: ManagedServer, vllm_reports: list, tmp_path: Path) -> None:
    """lighteval's runner (its LiteLLM backend, chat completions) on one adapter by served
    name: its accuracy equals the project's metric on the same generations."""
    target = runs["good"][0].run_id
    spec = EvalJobSpec(model=MODEL, sweep_id=SWEEP, run_ids=(target,), baseline=False,
                       backend="vllm", scorer="lighteval", dtype="float32",
                       options=_options())
    (report,) = run_eval_job(spec, tmp_path, server=server)
    assert report.scorer == "lighteval"
    answers = [r.answer_text for r in report.results]
    ours = sum(extract_answer(a or "", 4) == r.gold
               for a, r in zip(answers, report.results, strict=True)) / N_QUESTIONS
    assert report.metrics["lexam/accuracy"] == pytest.approx(ours)
    assert "lexam/format_rate" in report.metrics and "lexam/loglik_accuracy" in report.metrics
    run = MlflowClient().get_run(target)
    assert run.data.tags["lexam_scorer"] == "lighteval"
    # Server-side chat template (lighteval) and the project's own rendering: same answers.
    project = next(r for r in vllm_reports if r.run_id == target)
    assert [_text(a) for a in answers] == [_text(r.answer_text) for r in project.results]


def test_cli_evaluates_through_its_own_vllm_server(tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "evaluation", "--model", MODEL, "--backend", "vllm",
         "--data", "synthetic", "--max-questions", "3", "--max-new-tokens", "4",
         "--output-json", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["backend"] == "vllm" and "lexam/loglik_accuracy" in payload["metrics"]
    assert "server healthy" in done.stderr


def test_a_server_that_dies_mid_run_fails_the_job_with_its_log(
        runs: dict, server: ManagedServer, tmp_path: Path) -> None:
    """Last in the module: it kills the shared server."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    spec = EvalJobSpec(model=MODEL, sweep_id=SWEEP, backend="vllm", dtype="float32",
                       options=_options(max_questions=2))
    with pytest.raises(ServerError, match="during the evaluation") as caught:
        run_eval_job(spec, tmp_path, server=server)
    assert "last lines" in str(caught.value) and len(str(caught.value).splitlines()) > 3
