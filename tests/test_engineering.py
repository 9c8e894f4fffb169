"""Engineering sweeps: infrastructure axes, the job layout, OOM and GPU-hours recorded in
MLflow from the Airflow side, and the torchrun launcher on a real (local) SLURM cluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from cluster_jobs.script import render_script
from cluster_jobs.slurm import SlurmJobs, classify_end, parse_forgotten, parse_states
from cluster_jobs.trigger import ClusterJobTrigger
from mlflow.tracking import MlflowClient
from trigger_helpers import sense

from contracts.conf import parse_conf, plan_runs
from contracts.jobs import JOB_ID_PLACEHOLDER, JobRequest
from contracts.outcomes import classify
from contracts.profiles import ClusterProfile, ResourceRequest
from contracts.spec import RunSpec, SpecError
from contracts.states import JobState, JobStatus
from contracts.sweep import load_named_sweep, parse_sweep
from tracking.record import record_job_result

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "tiny-apertus", "method": "full", "lr": 1e-3, "max_steps": 2,
        "per_device_batch": 2, "grad_accum": 1, "max_seq_length": 256, "bf16": "off",
        "data": {"source": "synthetic", "synthetic_size": 32}}
# What a rank of a 4-GPU torchrun job prints when it runs out of accelerator memory (the
# training job records OOM itself only on rank 0; another rank's OOM kills the group).
CUDA_OOM_LOG = """\
[rank3]: Traceback (most recent call last):
[rank3]:   File "/src/training/job.py", line 196, in _train
[rank3]:     result = trainer.train(resume_from_checkpoint=checkpoint)
[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.50 GiB. GPU 3 has \
a total capacity of 94.50 GiB of which 1.06 GiB is free. Of the allocated memory 89.12 GiB \
is allocated by PyTorch, and 2.73 GiB is reserved by PyTorch but unallocated.
W1130 12:00:01.123000 torch/distributed/elastic/multiprocessing/api.py:897] Sending \
process 4711 closing signal SIGTERM
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
training FAILED
[cluster_jobs] exit code 1 at 2026-11-30T12:00:02+00:00
"""


# -- spec, grid, conf --------------------------------------------------------------------

def test_layout_is_identity_only_when_named() -> None:
    plain = RunSpec(**TINY)
    assert "nodes" not in plain.identity() and plain.run_name.endswith("-s0")
    two = RunSpec(**TINY, nodes=2, gpus_per_node=4, zero_stage=3)
    assert two.spec_hash != RunSpec(**TINY, nodes=1, gpus_per_node=4, zero_stage=3).spec_hash
    assert two.run_name.endswith("-n2x4-z3") and two.world_size == 8
    assert two.global_batch == 2 * 1 * 8
    assert two.tags()["nodes"] == "2" and plain.tags()["nodes"] == ""


def test_fixed_global_batch_derives_the_accumulation() -> None:
    raw = {"name": "eng", "global_batch": 64, "run": {**TINY, "per_device_batch": 4},
           "grids": [{"models": ["tiny-apertus"], "methods": ["full"], "learning_rates": [1e-3],
                      "nodes": [1, 2, 4], "gpus_per_node": [4], "zero_stages": [0, 3]}]}
    raw["run"] = {k: v for k, v in raw["run"].items() if k not in {"model", "method", "lr"}}
    specs = parse_sweep(raw).expand()
    assert len(specs) == 6
    assert {(s.nodes, s.zero_stage): s.grad_accum for s in specs} == {
        (1, 0): 4, (1, 3): 4, (2, 0): 2, (2, 3): 2, (4, 0): 1, (4, 3): 1}
    assert {s.global_batch for s in specs} == {64}
    with pytest.raises(SpecError, match="global_batch: 64 is not a multiple"):
        parse_sweep({**raw, "global_batch": 64, "grids": [{**raw["grids"][0], "nodes": [3]}]}
                    ).expand()
    grown = parse_sweep({**raw, "batch_scaling": "per_device"}).expand()
    assert sorted({s.global_batch for s in grown}) == [16, 32, 64]  # 4 x 1 x world


def test_conf_axes_validated_and_zero_axis_beats_the_profile_default() -> None:
    conf = parse_conf({"sweep": "tiny", "learning_rates": [1e-3], "ranks": [2],
                       "nodes": [1, 2], "gpus_per_node": [2], "zero_stages": [0, 3],
                       "global_batch": 16})
    specs = plan_runs(conf, per_model={"tiny-apertus": {"zero_stage": 2}})
    assert sorted((s.nodes, s.zero_stage, s.grad_accum) for s in specs) == [
        (1, 0, 2), (1, 3, 2), (2, 0, 1), (2, 3, 1)]
    # Without the axis, the profile's stage for the model applies as before.
    assert {s.zero_stage for s in plan_runs(parse_conf({"sweep": "tiny"}),
                                            per_model={"tiny-apertus": {"zero_stage": 2}})} == {2}
    assert conf.derived_sweep_id() != "tiny"
    for bad, field in [({"nodes": [0]}, "nodes.0"), ({"zero_stages": [1]}, "zero_stages.0"),
                       ({"gpus_per_node": ["$(id)"]}, "gpus_per_node.0"),
                       ({"batch_scaling": "; id"}, "batch_scaling"),
                       ({"global_batch": -1}, "global_batch")]:
        with pytest.raises(SpecError, match=field):
            parse_conf({"sweep": "tiny", **bad})


def test_scaling_reference_preset() -> None:
    specs = load_named_sweep("scaling-reference").expand()
    layouts = sorted((s.model, s.nodes, s.zero_stage) for s in specs)
    assert [x for x in layouts if x[0] == "apertus-8b"] == [
        ("apertus-8b", n, 0) for n in (1, 2, 4, 8)]
    assert [x for x in layouts if x[0] == "apertus-70b"] == sorted(
        ("apertus-70b", n, z) for n in (2, 4, 8) for z in (0, 2, 3))
    assert {s.global_batch for s in specs} == {256} and {s.gpus_per_node for s in specs} == {4}


def test_job_script_asks_for_the_specs_layout() -> None:
    profile = ClusterProfile(name="c", backend="slurm", ssh_conn_id="x", launcher="torchrun",
                             resources={"nodes": 1, "gpus_per_node": 4},
                             overrides={"apertus-70b": {"nodes": 4, "mem": "400G"}})
    request = JobRequest(name="j", argv=("python", "-m", "training", "--spec", "s.yaml"),
                         resources_key="apertus-70b",
                         resources=ResourceRequest(nodes=8, gpus_per_node=2))
    script = render_script(profile, request, "/jobs/j")
    assert "#SBATCH --nodes=8" in script and "#SBATCH --gpus-per-node=2" in script
    assert "#SBATCH --mem=400G" in script  # the key's override still applies
    assert "--nproc-per-node=2" in script and "torchrun -m training" in script
    with pytest.raises(ValueError, match="nodes"):
        JobRequest(name="j", argv=("x",), resources={"nodes": "2; id"})


# -- OOM classification and recording (real MLflow) ---------------------------------------

def test_recorded_cuda_oom_log_is_classified_oom() -> None:
    outcome, reason = classify("FAILED", 1, CUDA_OOM_LOG)
    assert outcome == "oom" and "CUDA out of memory" in reason
    assert classify("FAILED", 1, "Traceback\nValueError: bad\n")[0] == "failed"
    assert classify("TIMEOUT", None, "")[0] == "failed"
    assert classify("COMPLETED", 0, CUDA_OOM_LOG) is None
    assert classify("OUT_OF_MEMORY", None, "")[0] == "oom"
    # SLURM's own memory kill, as slurmstepd writes it without cgroups (seen on 22.05).
    status = JobStatus(job_id="7", state=JobState.FAILED, exit_code=0, signal=9)
    tail = ("slurmstepd-localnode: error: StepId=7.batch exceeded memory limit "
            "(444370944 > 209715200), being killed\n")
    assert classify_end(status, tail).state is JobState.OUT_OF_MEMORY
    assert classify_end(status, "MemoryError in user code\n").state is JobState.FAILED


def test_job_results_land_in_the_specs_run(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    never_started = RunSpec(**TINY, nodes=4, gpus_per_node=4, zero_stage=0, sweep_id="eng")
    result = {"job_id": "41", "state": "FAILED", "exit_code": 1, "log_tail": CUDA_OOM_LOG,
              "accounting": {"elapsed_s": 900.0, "gpus": 16, "source": "sacct"}}
    assert record_job_result(never_started, result)["recorded"] == "oom"
    run = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id],
                             f"tags.spec_hash = '{never_started.spec_hash}'")[0]
    tags = run.data.tags
    assert tags["outcome"] == "oom" and "CUDA out of memory" in tags["failure_reason"]
    assert (tags["nodes"], tags["gpus_per_node"], tags["zero_stage"]) == ("4", "4", "0")
    assert run.data.params["nodes"] == "4" and run.info.status == "FAILED"
    assert run.data.metrics["cost/gpu_hours_accounted"] == pytest.approx(4.0)

    finished = RunSpec(**TINY, sweep_id="eng", seed=1)
    experiment_id = client.get_experiment_by_name("lora-regret").experiment_id
    run_id = client.create_run(experiment_id, tags={**finished.tags(), "outcome": "finished"}
                               ).info.run_id
    ok = {"job_id": "42", "state": "COMPLETED", "exit_code": 0,
          "accounting": {"elapsed_s": 36.0, "gpus": 0, "source": "scontrol"}}
    assert record_job_result(finished, ok)["recorded"] == "accounting"
    after = client.get_run(run_id).data
    assert after.tags["outcome"] == "finished" and after.metrics["cost/gpu_hours_accounted"] == 0
    assert after.metrics["cost/elapsed_s_accounted"] == 36.0


def test_accounting_parsing() -> None:
    # squeue -O JobID,State,Reason,exit_code,TimeUsed,tres-alloc,NumNodes (wait status 768:
    # exit code 3), for jobs SLURM still knows; the accounting fallback for the others.
    reports = parse_states("7|COMPLETED|None|0|1:00:00|cpu=64,gres/gpu=8,node=2|2|\n"
                           "8|FAILED|NonZeroExitCode|768|0:01:03|cpu=1,node=1|1|\n"
                           "9|RUNNING|None|0|0:10|cpu=1,node=1|1|\nnoise\n")
    assert reports["7"].accounting.gpu_hours == 8.0 and reports["7"].accounting.nodes == 2
    assert reports["8"].status.exit_code == 3 and reports["8"].accounting.elapsed_s == 63
    assert reports["8"].accounting.gpu_hours == 0
    assert reports["9"].accounting is None and reports["9"].status.exit_code is None
    forgotten = parse_forgotten(
        "a|41|COMPLETED|0:0|3600|billing=8,cpu=64,gres/gpu=8,mem=100G,node=2|2\n"
        "c|42|FAILED|1:0|5||1\nx|43|2\n", ["41", "42", "43", "44"])
    assert forgotten["41"].accounting.gpu_hours == 8.0
    assert forgotten["42"].status.exit_code == 1 and forgotten["42"].accounting.gpus is None
    assert forgotten["43"].status.exit_code == 2 and forgotten["43"].accounting is None
    assert "does not know" in forgotten["44"].status.reason


# -- real SLURM ---------------------------------------------------------------------------



@pytest.mark.slurm
def test_job_over_its_memory_limit_is_out_of_memory_and_recorded(
        slurm_profile: ClusterProfile, mlflow_uri: str) -> None:
    """A real memory kill by SLURM (--mem=200M, the job grows past it): the job never
    reaches MLflow; its state comes back OUT_OF_MEMORY and the run is recorded as oom."""
    grow = ("import time\nx = []\nfor _ in range(100):\n"
            "    x.append(bytearray(50 * 2**20)); time.sleep(0.05)\nprint('survived')\n")
    request = JobRequest(name="oom", key="oom", argv=("python3", "-c", grow),
                         resources=ResourceRequest(mem="200M"))
    profile = slurm_profile.model_copy(update={"chdir": None})
    job_id, _ = SlurmJobs(profile).submit(request, os.environ)
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id, key="oom"))
    assert event["status"]["state"] == "OUT_OF_MEMORY", event
    assert "exceeded memory limit" in event["log_tail"]
    assert "survived" not in event["log_tail"]
    assert event["accounting"]["source"] == "squeue"
    assert event["accounting"]["elapsed_s"] is not None and event["accounting"]["gpus"] == 0

    spec = RunSpec(**TINY, nodes=1, gpus_per_node=0, sweep_id="eng-oom")
    result = {"job_id": job_id, "state": event["status"]["state"], "exit_code":
              event["status"]["exit_code"], "log_tail": event["log_tail"],
              "accounting": event["accounting"]}
    assert record_job_result(spec, result)["recorded"] == "oom"
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id],
                             "tags.sweep_id = 'eng-oom'")[0]
    assert run.data.tags["outcome"] == "oom" and run.data.tags["job_id"] == job_id
    assert "exceeded memory limit" in run.data.tags["failure_reason"]


@pytest.mark.slurm
@pytest.mark.slow
def test_zero3_job_through_the_job_scripts_torchrun_launcher(
        slurm_profile: ClusterProfile, mlflow_uri: str, tmp_path: Path) -> None:
    """srun + torchrun (rendezvous from SLURM variables) exactly as rendered for a
    cluster, 2 CPU workers: a DeepSpeed ZeRO-3 LoRA job that records what the engine ran,
    loads sharded and registers its adapter once, from rank 0."""
    venv_bin = REPO_ROOT / ".venv" / "bin"
    profile = slurm_profile.model_copy(update={
        "launcher": "torchrun", "setup": (f"export PATH={venv_bin}:$PATH",),
        "env": {"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
                "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}})
    spec = RunSpec(**{**TINY, "method": "lora", "rank": 4, "max_steps": 3},
                   nodes=1, gpus_per_node=0, zero_stage=3, sweep_id="eng-zero3",
                   output_dir=str(tmp_path))
    request = JobRequest(
        name="zero3", key="zero3", files={"spec.yaml": spec.to_yaml()},
        argv=(profile.python_executable(), "-m", "training", "--spec", "{job_dir}/spec.yaml",
              "--job-id", JOB_ID_PLACEHOLDER),
        resources=ResourceRequest(nodes=1, workers_per_node=2))
    job_id, _ = SlurmJobs(profile).submit(request, os.environ)
    event = sense(ClusterJobTrigger(profile=profile.model_dump(), job_id=job_id, key="zero3"),
                  timeout=600)
    assert event["status"]["state"] == "COMPLETED", event
    script = (Path(profile.work_dir) / "zero3" / "job.sh").read_text()
    assert "--nproc-per-node=2" in script and "srun --ntasks-per-node=1" in script
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id],
                              "tags.sweep_id = 'eng-zero3'")
    assert len(runs) == 1
    data = runs[0].data
    assert data.metrics["train/world_size"] == 2 == data.metrics["engine/world_size"]
    assert data.tags["engine"] == "deepspeed" and data.tags["engine/zero_stage"] == "3"
    assert data.metrics["memory/load_param_fraction"] == pytest.approx(0.5, abs=0.01)
    assert data.metrics["train/samples_per_second"] > 0
    assert data.tags["outcome"] == "finished" and data.tags["job_id"] == job_id
    assert (data.tags["nodes"], data.tags["gpus_per_node"]) == ("1", "0")
    assert data.tags["registered_model_uri"] == "models:/lora-regret-tiny-apertus-lora/1"
    versions = client.search_model_versions("name = 'lora-regret-tiny-apertus-lora'")
    assert len(versions) == 1


# -- the DAG, real Airflow over real SLURM --------------------------------------------------

@pytest.mark.slurm
@pytest.mark.airflow
@pytest.mark.slow
def test_dag_records_a_slurm_memory_kill_as_oom(
        airflow_db: Path, local_slurm, mlflow_uri: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep DAG on a SLURM profile whose jobs get 300M: the training job is killed
    while importing torch, before it ever reaches MLflow; the train task fails with
    OUT_OF_MEMORY and the record task writes an oom run with the spec's layout."""
    from airflow.dag_processing.dagbag import DagBag

    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "tight.yaml").write_text(yaml.safe_dump({
        "backend": "slurm", "ssh_conn_id": local_slurm.conn_id,
        "work_dir": str(tmp_path / "jobs"), "outputs_dir": str(tmp_path / "runs"),
        "chdir": str(REPO_ROOT), "python": str(REPO_ROOT / ".venv" / "bin" / "python"),
        "poll_interval": 1, "pass_env": ["MLFLOW_TRACKING_URI"],
        "env": {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"},
        "resources": {"mem": "300M", "time_limit": "00:10:00"}}))
    # The other DAGs' forms default to the `local` profile: keep it next to this one.
    shutil.copy(REPO_ROOT / "configs" / "clusters" / "local.yaml", clusters / "local.yaml")
    monkeypatch.setenv("LORA_REGRET_CLUSTERS_DIR", str(clusters))
    conf = {"sweep": "tiny", "cluster": "tight", "learning_rates": [1e-3], "ranks": [2],
            "nodes": [1], "gpus_per_node": [0], "zero_stages": [0], "max_steps": 2,
            "evaluate": False}
    bag = DagBag()
    assert bag.import_errors == {}
    run = bag.get_dag("lora_regret_sweep").test(run_conf=conf)
    got = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert got["train"] == "failed" and got["record"] == "success", got
    client = MlflowClient(mlflow_uri)
    [spec] = plan_runs(parse_conf(conf))
    runs = client.search_runs([client.get_experiment_by_name("lora-regret").experiment_id],
                              f"tags.spec_hash = '{spec.spec_hash}'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["outcome"] == "oom" and tags["job_state"] == "OUT_OF_MEMORY"
    assert (tags["nodes"], tags["zero_stage"]) == ("1", "0") and tags["job_id"]
    assert "cost/elapsed_s_accounted" in runs[0].data.metrics
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


# -- the report's scaling section (synthetic reference-shaped sweep, real MLflow) --------

def test_scaling_section_of_the_report(mlflow_uri: str, tmp_path: Path) -> None:
    from synthetic_scaling import log_scaling_sweep

    from reporting.config import ReportConfig
    from reporting.pipeline import generate

    log_scaling_sweep(mlflow_uri)
    [report] = generate(ReportConfig(tracking_uri=mlflow_uri, sweep_ids=("scaling-reference",),
                                     output_dir=tmp_path / "reports", log_to_mlflow=False))
    sc = report.findings.scaling
    eight = [p for p in sc.points if p.model == "apertus-8b"]
    assert [p.nodes for p in eight] == [1, 2, 4, 8] and eight[0].speedup == 1.0
    assert eight[-1].speedup == pytest.approx(7.52)
    assert eight[-1].efficiency == pytest.approx(0.94)
    assert {(p.zero_stage, p.nodes) for p in sc.oom} == {
        (0, 2), (0, 4), (0, 8), (2, 2), (2, 4), (2, 8), (3, 2)}
    zero3 = [p for p in sc.points if p.model == "apertus-70b" and p.zero_stage == 3]
    assert zero3[1].nodes == 4 and zero3[1].speedup == 1.0  # smallest working layout
    assert zero3[2].efficiency == pytest.approx(0.85)
    assert (sc.cheapest["apertus-8b"].nodes, sc.cheapest["apertus-70b"].nodes) == (1, 4)
    assert sc.cheapest["apertus-70b"].gpu_hours_source == "accounted"
    out = report.report_dir
    assert (out / "scaling.png").is_file() and (out / "scaling.svg").is_file()
    text = (out / "report.md").read_text()
    assert "## Scaling, memory and cost" in text and "| OOM |" in text
    assert "4 node(s) x 4 GPUs, ZeRO-3" in text
    findings = yaml.safe_load((out / "findings.json").read_text())
    assert len(findings["scaling"]["points"]) == 13
    assert any(s["id"] == "scaling.apertus-70b.oom" for s in findings["statements"])
    # The memory plan (Alps, 96 GB) beside what happened: it agrees on every 70B layout but
    # ZeRO-3 on 4 nodes, and holds 8B full FT with ZeRO-0 for out of memory (20 B/param).
    said = {s["id"]: s["text"] for s in findings["statements"]}
    assert "agreed with the outcome on 8 of 9 layouts; predicted OOM but ran: 4 nodes x 4 " \
        "GPUs, ZeRO-3 (122 GB planned > 96)" in said["scaling.apertus-70b.memory_plan"]
    assert "agreed with the outcome on 0 of 4 layouts" in said["scaling.apertus-8b.memory_plan"]
    assert "| 210 > 96: OOM |" in text and "| 77 <= 96 |" in text
    assert "Predicted out of memory by the plan before submitting: apertus-70b ZeRO-0 on 2 " \
        "node(s)" in text and "apertus-8b ZeRO-0 on 8 node(s)." in text
