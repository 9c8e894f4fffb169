"""The memory plan (contracts.memory): the formula against DeepSpeed's own estimators, the
reference study's layouts, and the sweep's plan holding back predicted OOM layouts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contracts.conf import parse_conf
from contracts.memory import GB, ModelShape, estimate, model_state_bytes
from contracts.plan import plan_sweep
from contracts.presets import get_preset
from contracts.profiles import ClusterProfile, load_profile
from contracts.spec import RunSpec

FULL_8B = {"model": "apertus-8b", "method": "full", "lr": 1e-5, "per_device_batch": 4,
           "max_seq_length": 2048, "gradient_checkpointing": True}


def shape(name: str) -> ModelShape:
    found = ModelShape.from_preset(get_preset(name))
    assert found is not None
    return found


@pytest.mark.parametrize("name", ["apertus-8b", "apertus-70b"])
@pytest.mark.parametrize(("nodes", "gpus"), [(1, 1), (1, 4), (2, 4), (8, 4)])
def test_model_states_match_deepspeeds_estimators(name: str, nodes: int, gpus: int) -> None:
    """ZeRO-2: exactly DeepSpeed's 2N + 18N/W. ZeRO-3: DeepSpeed's 4 x largest layer + 18N/W,
    plus the 16-bit gradient partition (2N/W) that its estimate leaves out."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    s, world = shape(name), nodes * gpus
    n = s.total_params
    _, ds2 = estimate_zero2_model_states_mem_needs(n, gpus, nodes, cpu_offload=False)
    assert sum(model_state_bytes(s, n, world, 2)) == pytest.approx(ds2, abs=1)
    _, ds3, _ = estimate_zero3_model_states_mem_needs(n, s.largest_layer_params, gpus, nodes,
                                                      cpu_offload=False)
    assert sum(model_state_bytes(s, n, world, 3)) == pytest.approx(ds3 + 2 * n / world, abs=1)
    # ZeRO-0 replicates what ZeRO-2 partitions: 20 bytes a parameter (16 in the ZeRO paper,
    # which does not count the fp32 gradient); without DeepSpeed (fp32 weights) 16.
    assert sum(model_state_bytes(s, n, world, 0)) == 20 * n
    assert sum(model_state_bytes(s, n, world, None)) == 16 * n


def test_the_largest_layer_is_the_embedding() -> None:
    s = shape("apertus-70b")
    assert s.largest_layer_params == 131072 * 8192


def test_reference_layouts() -> None:
    """The study: 70B full FT needs ZeRO-3 (ZeRO-0/2 OOM); 8B ran with ZeRO-0 on 2 x 4
    GH200. The plan agrees on 70B, and says 8B full FT with Adam cannot fit without
    partitioning (20 B/param x 8.05 B = 161 GB of model states per GPU > 96)."""
    def plan(**kw):
        raw = {**FULL_8B, **kw}
        return estimate(RunSpec(**raw), gpu_memory_gb=96)

    eight = plan(nodes=2, gpus_per_node=4, zero_stage=0)
    assert eight.predicted_oom and eight.weights_gb + eight.gradients_gb + \
        eight.optimizer_gb == pytest.approx(20 * 8_053_338_176 / GB)
    assert not plan(nodes=2, gpus_per_node=4, zero_stage=3).predicted_oom
    lora = plan(method="lora", rank=512, lr=1e-3, nodes=2, gpus_per_node=4, zero_stage=0)
    assert not lora.predicted_oom and lora.optimizer_gb < 20
    for zero in (0, 2):
        for nodes in (2, 4, 8):
            assert plan(model="apertus-70b", nodes=nodes, gpus_per_node=4,
                        zero_stage=zero).predicted_oom
    assert plan(model="apertus-70b", nodes=2, gpus_per_node=4, zero_stage=3).predicted_oom
    assert not plan(model="apertus-70b", nodes=8, gpus_per_node=4, zero_stage=3).predicted_oom
    # Activations: checkpointing keeps only each layer's input.
    full_acts = plan(gradient_checkpointing=False, nodes=2, gpus_per_node=4, zero_stage=3)
    assert full_acts.activations_gb > 3 * eight.activations_gb


def test_no_verdict_without_a_shape_or_gpus() -> None:
    tiny = estimate(RunSpec(model="tiny-apertus", method="full", lr=1e-3, nodes=1,
                            gpus_per_node=4), gpu_memory_gb=96)
    assert tiny.verdict == "unknown" and "shape unknown" in tiny.note
    cpu = estimate(RunSpec(**FULL_8B, nodes=1, gpus_per_node=0), gpu_memory_gb=96)
    assert cpu.verdict == "unknown" and cpu.total_gb is not None
    unknown_memory = estimate(RunSpec(**FULL_8B, nodes=1, gpus_per_node=4))
    assert unknown_memory.verdict == "unknown" and "gpu_memory_gb" in unknown_memory.note


def test_sweep_plan_holds_back_predicted_oom_unless_asked() -> None:
    """scaling-reference on Alps: 12 of its 13 layouts are predicted OOM and held back; the
    summary (the plan task's log) says which and why; submit_predicted_oom submits them."""
    alps = load_profile("alps")
    assert alps.resources.gpu_memory_gb == 96
    plan = plan_sweep(parse_conf({"sweep": "scaling-reference", "cluster": "alps"}), alps,
                      lambda specs: set())
    assert [j.spec.run_name for j in plan.train] == ["apertus-70b-full-lr1e-05-s0-n8x4-z3"]
    assert len(plan.held_back) == 12 and len(plan.memory) == 13
    assert plan.train[0].spec.gpu_memory_gb == 96  # recorded with the run (report)
    summary = plan.summary()
    assert "12 predicted OOM held back" in summary
    assert "predicted OOM: apertus-70b-full-lr1e-05-s0-n2x4-z0 (2 node(s) x 4 GPU(s), " \
        "ZeRO-0)" in summary and "> 96 GB: predicted OOM" in summary
    forced = plan_sweep(parse_conf({"sweep": "scaling-reference", "cluster": "alps",
                                    "submit_predicted_oom": True}), alps, lambda specs: set())
    assert len(forced.train) == 13 and forced.held_back == ()
    assert "12 predicted OOM submitted anyway" in forced.summary()
    with pytest.raises(ValueError, match="submit_predicted_oom"):
        parse_conf({"submit_predicted_oom": "yes"})


def test_profiles_without_gpu_memory_check_nothing() -> None:
    local = ClusterProfile(name="cpu", backend="local")
    plan = plan_sweep(parse_conf({"sweep": "tiny", "cluster": "local"}), local,
                      lambda specs: set())
    assert plan.held_back == () and len(plan.train) == plan.n_runs
    assert "memory plan" not in plan.summary()


def test_the_plan_imports_no_ml_stack() -> None:
    code = ("import sys, contracts.memory, contracts.plan\n"
            "bad = {'torch', 'deepspeed', 'transformers', 'mlflow', 'airflow'} & set(sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
