"""Real training steps on the tiny random Apertus, recorded in a real MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel
from test_parameter_counts import lora_per_rank
from transformers import AutoModelForCausalLM

from contracts.presets import get_preset
from contracts.spec import RunSpec
from training.job import is_out_of_memory, run_training
from training.models import resolve_model_path
from training.registry import fetch_adapter, fetch_checkpoint

FAST = {"model": "tiny-apertus", "max_steps": 16, "per_device_batch": 4, "grad_accum": 1,
        "max_seq_length": 256, "data": {"source": "synthetic", "synthetic_size": 128},
        "bf16": "off", "save_steps": 100}


def losses(run_id: str) -> list[float]:
    history = MlflowClient().get_metric_history(run_id, "train/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def falls(values: list[float]) -> bool:
    return sum(values[-4:]) / 4 < sum(values[:4]) / 4 - 0.05


def sample_input() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[5, 17, 42, 99, 230, 7, 64, 301]])}


@pytest.fixture(scope="module")
def lora_run(module_mlflow_uri, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    spec = RunSpec(**FAST, method="lora", rank=8, lr=1e-2, output_dir=str(runs),
                   sweep_id="t-lora")
    yield spec, run_training(spec, job_id="4242")
    patch.undo()


def test_lora_run_trains_logs_and_registers(lora_run) -> None:
    spec, outcome = lora_run
    assert outcome.outcome == "finished" and outcome.steps == 16
    run = MlflowClient().get_run(outcome.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["outcome"] == "finished" and run.info.status == "FINISHED"
    assert tags["spec_hash"] == spec.spec_hash and tags["job_id"] == "4242"
    assert (tags["sweep_id"], tags["model"], tags["method"], tags["rank"], tags["lr"],
            tags["seed"]) == ("t-lora", "tiny-apertus", "lora", "8", "0.01", "0")
    assert run.data.params["data.source"] == "synthetic"
    loss = losses(outcome.run_id)
    assert len(loss) == 16 and falls(loss)
    assert metrics["train/final_loss"] == pytest.approx(sum(loss[-10:]) / 10)
    for key in ("train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert len(MlflowClient().get_metric_history(outcome.run_id, key)) >= 15, key
    assert 0 < metrics["model/trainable_fraction"] < 0.5
    assert "system/cpu_utilization_percentage" in metrics
    arch = get_preset("tiny-apertus").architecture
    assert metrics["model/trainable_params"] == 8 * lora_per_rank(
        arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"],
        arch["num_attention_heads"], arch["num_key_value_heads"])


def test_registered_adapter_loads_back_with_identical_outputs(lora_run, tmp_path) -> None:
    spec, outcome = lora_run
    assert outcome.model_uri == "models:/lora-regret-tiny-apertus-lora/1"
    version = MlflowClient().get_model_version("lora-regret-tiny-apertus-lora", "1")
    assert version.tags["spec_hash"] == spec.spec_hash
    assert version.tags["run_id"] == outcome.run_id
    adapter = fetch_adapter(outcome.model_uri, tmp_path / "download")
    assert not list(adapter.parent.rglob("model.safetensors")), "base weights were copied"
    base_path = resolve_model_path("tiny-apertus")

    def logits(adapter_dir: Path | None) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, adapter_dir)
        with torch.no_grad():
            return model.eval()(**sample_input()).logits

    registered = logits(adapter)
    assert torch.equal(registered, logits(spec.run_dir / "final"))
    assert not torch.allclose(registered, logits(None)), "the adapter changed nothing"


def test_full_run_registers_a_reference_not_a_copy(mlflow_uri, tmp_path) -> None:
    spec = RunSpec(**FAST, method="full", lr=1e-3, output_dir=str(tmp_path / "runs"))
    outcome = run_training(spec)
    assert outcome.outcome == "finished" and falls(losses(outcome.run_id))
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.metrics["model/trainable_fraction"] == 1.0
    checkpoint = fetch_checkpoint(outcome.model_uri)
    assert checkpoint == (spec.run_dir / "final").resolve()
    assert run.data.tags["checkpoint_path"] == str(checkpoint)
    assert (checkpoint / "model.safetensors").is_file()
    artifacts = [a.path for a in MlflowClient().list_artifacts(outcome.run_id,
                                                                "checkpoint_reference")]
    assert artifacts == ["checkpoint_reference/reference.json"], "weights copied to the store"


def test_non_finite_loss_stops_the_run_as_diverged(mlflow_uri, tmp_path) -> None:
    broken = tmp_path / "nan-model"
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-apertus"))
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (broken / name).write_bytes((Path(resolve_model_path("tiny-apertus")) / name).read_bytes())
    spec = RunSpec(**{**FAST, "max_steps": 50}, method="lora", rank=4, lr=1e-3,
                   model_path=str(broken), output_dir=str(tmp_path / "runs"))
    outcome = run_training(spec)
    assert outcome.outcome == "diverged" and outcome.steps < 50
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["outcome"] == "diverged" and run.info.status == "FAILED"
    assert "diverged_at_step" in run.data.tags
    assert outcome.model_uri is None


def test_interrupted_job_resumes_from_its_checkpoint(mlflow_uri, tmp_path) -> None:
    spec = RunSpec(**{**FAST, "max_steps": 40, "save_steps": 4}, method="lora", rank=4,
                   lr=1e-3, output_dir=str(tmp_path / "runs"))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    command = [sys.executable, "-m", "training", "--spec", str(spec_file), "--no-register"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(spec.run_dir.glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    run_id = (spec.run_dir / "mlflow_run_id").read_text()
    assert MlflowClient().get_run(run_id).data.tags["outcome"] == "running"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "checkpoint-" in second.stderr
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["outcome"] == "finished"
    assert run.data.metrics["train/global_steps"] == 40
    runs = MlflowClient().search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], "a retry must continue the same run"


def test_cli_refuses_a_bad_spec_before_training(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "--model", "tiny-apertus", "--method", "full",
         "--rank", "8", "--lr", "1e-4", "--output-dir", str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert "rank" in result.stderr
    assert not any(tmp_path.iterdir())


def test_cli_help_documents_the_flags() -> None:
    result = subprocess.run([sys.executable, "-m", "training", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--spec", "--model", "--method", "--lr", "--rank", "--seed", "--max-steps",
                 "--data", "--output-dir", "Exit codes"):
        assert flag in result.stdout


OOM_SCRIPT = """
import resource, sys
from training.job import is_out_of_memory, run_training
from training.models import resolve_model_path
from contracts.spec import RunSpec
spec = RunSpec.from_file(sys.argv[1])
resolve_model_path(spec.model)
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) for line in status if line.startswith("VmSize")) * 1024
# Everything is imported; the address space may now grow by 600 MiB, not by the GBs
# that a batch of 64 x 2048 tokens needs.
resource.setrlimit(resource.RLIMIT_AS, (size + 600 * 2**20, size + 600 * 2**20))
print("OUTCOME", run_training(spec, register=False).outcome)
"""


def test_out_of_memory_is_recorded_as_oom(mlflow_uri, tmp_path) -> None:
    spec = RunSpec(**{**FAST, "max_steps": 3, "per_device_batch": 64, "max_seq_length": 2048,
                      "data": {"source": "synthetic", "synthetic_size": 64}},
                   method="full", lr=1e-3, output_dir=str(tmp_path / "runs"))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    result = subprocess.run([sys.executable, "-c", OOM_SCRIPT, str(spec_file)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})
    assert "OUTCOME oom" in result.stdout, result.stderr[-3000:]
    run_id = (spec.run_dir / "mlflow_run_id").read_text()
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["outcome"] == "oom" and run.info.status == "FAILED"
    assert "allocate" in run.data.tags["failure_reason"]
    assert run.data.params["per_device_batch"] == "64"  # the configuration that did not fit
    assert run.data.metrics["memory/peak_host_mb"] > 0


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 79.11 GiB total)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 4734976 bytes."),
    MemoryError(),
])
def test_recorded_out_of_memory_messages_are_recognised(error) -> None:
    assert is_out_of_memory(error)


def test_other_errors_are_not_out_of_memory() -> None:
    assert not is_out_of_memory(RuntimeError("expected scalar type Float but found BFloat16"))
    assert not is_out_of_memory(ValueError("out of memory budget"))


def test_two_process_ddp_run_through_torchrun(mlflow_uri, tmp_path) -> None:
    """The launcher path of the job script (torchrun), with 2 CPU processes on gloo."""
    spec = RunSpec(**{**FAST, "max_steps": 4, "per_device_batch": 2}, method="lora", rank=4,
                   lr=1e-3, output_dir=str(tmp_path / "runs"))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training",
         "--spec", str(spec_file), "--no-register"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("lora-regret").experiment_id])
    assert len(runs) == 1, "only the main process may create the MLflow run"
    metrics = runs[0].data.metrics
    assert metrics["train/world_size"] == 2
    assert metrics["train/tokens_per_second"] > 0 and metrics["train/samples_per_second"] > 0
    assert runs[0].data.tags["outcome"] == "finished"
