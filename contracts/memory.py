"""The memory plan: what one training process needs on its GPU, estimated before submitting.

Pure arithmetic on a model preset's shape and a run spec (no torch, no DeepSpeed), so the
sweep's plan runs it on the Airflow side and holds back layouts that cannot fit. Per GPU:

- **model states**, in DeepSpeed's own accounting (its ``estimate_zero2/3_model_states_
  mem_needs``; ``tests/test_memory_plan.py`` checks the formula against them). Under
  DeepSpeed with bf16 a trainable parameter keeps 2 B of 16-bit weight, 2 B 16-bit + 4 B
  fp32 gradient and 12 B of fp32 master weight, Adam momentum and variance: 20 B (the ZeRO
  paper's 16 B leaves the fp32 gradient out). Without DeepSpeed (fp32 weights, autocast)
  it is 4 + 4 + 8 = 16 B. Frozen weights (a LoRA base) keep their 2 B or 4 B. ZeRO-2
  partitions gradients and optimizer states over the world, ZeRO-3 the weights too, plus
  the largest layer gathered whole (its 16-bit weight and gradient); ZeRO-0 and plain
  DDP replicate everything.
- **activations** of one micro-batch (b sequences of s tokens), 16-bit: per decoder layer
  s*b*(16h + 4i) bytes (Korthikanti et al. 2022, "Reducing activation recomputation",
  34sbh for a 4h MLP, here without dropout masks, with the model's MLP size, and without
  attention scores, which SDPA/flash attention does not keep); with gradient checkpointing
  only each layer's input (2sbh) plus one layer recomputed; the logits with their fp32 copy
  and gradient (10 B per vocabulary entry and token). fp32 doubles the 16-bit parts.
- **overhead**: CUDA context, NCCL and allocator slack (3 GB), plus DeepSpeed's
  communication buckets under ZeRO (2 GB at the default bucket sizes).

It is an estimate: the verdict is "predicted OOM" when the total exceeds the GPU's memory,
and such layouts are still submitted when the sweep conf says so (``submit_predicted_oom``).
GB are 10^9 bytes, as GPU memory is sold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.presets import ModelPreset, load_presets
from contracts.profiles import Resources
from contracts.spec import RunSpec

GB = 1e9
FRAMEWORK_OVERHEAD_GB = 3.0
ZERO_BUCKETS_GB = 2.0
LOGIT_BYTES = 10  # 16-bit logits, their fp32 copy for the loss, its gradient
ADAM_STATE_BYTES = 8  # momentum + variance, fp32
Verdict = Literal["fits", "predicted_oom", "unknown"]


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model (from configs/models.yaml)."""

    total_params: int
    lora_params_per_rank: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int

    @property
    def largest_layer_params(self) -> int:
        """The largest single module: the embedding (or LM head), else an MLP matrix."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)

    @classmethod
    def from_preset(cls, preset: ModelPreset) -> ModelShape | None:
        arch = preset.architecture or {}
        needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
        if not preset.total_params or not preset.lora_params_per_rank or \
                any(k not in arch for k in needed):
            return None
        return cls(preset.total_params, preset.lora_params_per_rank, arch["hidden_size"],
                   arch["intermediate_size"], arch["num_hidden_layers"], arch["vocab_size"])


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of model states, by kind."""

    weight: int  # every parameter's weight in memory
    gradient: int  # per trainable parameter
    optimizer: int  # per trainable parameter (master weight + Adam)


def state_bytes(deepspeed: bool, bf16: bool) -> StateBytes:
    if deepspeed and bf16:
        return StateBytes(weight=2, gradient=2 + 4, optimizer=4 + ADAM_STATE_BYTES)
    return StateBytes(weight=4, gradient=4, optimizer=ADAM_STATE_BYTES)


def model_state_bytes(shape: ModelShape, trainable: int, world: int, zero_stage: int | None,
                      bf16: bool = True) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) in bytes on one GPU."""
    b = state_bytes(zero_stage is not None, bf16)
    n, stage = shape.total_params, zero_stage or 0
    weights = b.weight * n
    gradients = b.gradient * trainable
    optimizer = b.optimizer * trainable
    if stage >= 1:
        optimizer /= world
    if stage >= 2:
        gradients /= world
    if stage >= 3:
        weights /= world
        gathered = b.weight * shape.largest_layer_params  # one layer gathered whole ...
        weights += gathered
        if trainable >= n:
            gradients += gathered  # ... with its gradient (a full fine-tune trains it)
    return weights, gradients, optimizer


def activation_bytes(shape: ModelShape, micro_batch: int, seq: int, checkpointing: bool,
                     bf16: bool = True) -> float:
    """Activations kept for the backward pass of one micro-batch."""
    tokens = micro_batch * seq
    layer = tokens * (16 * shape.hidden + 4 * shape.intermediate)
    kept = shape.layers * 2 * tokens * shape.hidden + layer if checkpointing \
        else shape.layers * layer
    if not bf16:
        kept *= 2
    return kept + LOGIT_BYTES * tokens * shape.vocab


class MemoryEstimate(BaseModel):
    """The plan for one run on one layout (GB per GPU)."""

    model_config = ConfigDict(frozen=True)

    run_name: str
    model: str
    method: str
    rank: int | None
    nodes: int
    gpus_per_node: int
    zero_stage: int | None
    world_size: int
    weights_gb: float | None = None
    gradients_gb: float | None = None
    optimizer_gb: float | None = None
    activations_gb: float | None = None
    overhead_gb: float | None = None
    total_gb: float | None = None
    gpu_memory_gb: float | None = None
    verdict: Verdict = "unknown"
    note: str = ""

    @property
    def predicted_oom(self) -> bool:
        return self.verdict == "predicted_oom"

    def layout(self) -> str:
        zero = "no DeepSpeed" if self.zero_stage is None else f"ZeRO-{self.zero_stage}"
        return f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s), {zero}"

    def line(self) -> str:
        """One line for the trigger's log."""
        head = f"{self.run_name} ({self.layout()})"
        if self.total_gb is None:
            return f"{head}: no estimate ({self.note})"
        parts = (f"weights {self.weights_gb:.1f} + gradients {self.gradients_gb:.1f} + "
                 f"optimizer {self.optimizer_gb:.1f} + activations {self.activations_gb:.1f}"
                 f" + overhead {self.overhead_gb:.1f} = {self.total_gb:.1f} GB per GPU")
        if self.gpu_memory_gb is None:
            return f"{head}: {parts} ({self.note})"
        sign = ">" if self.predicted_oom else "<="
        verdict = "predicted OOM" if self.predicted_oom else "fits"
        return f"{head}: {parts} {sign} {self.gpu_memory_gb:g} GB: {verdict}"

    def metrics(self) -> dict[str, float]:
        """``memory/plan_*`` for the run in MLflow (only the values that are known)."""
        values = {"weights": self.weights_gb, "gradients": self.gradients_gb,
                  "optimizer": self.optimizer_gb, "activations": self.activations_gb,
                  "total": self.total_gb, "gpu_memory": self.gpu_memory_gb}
        return {f"memory/plan_{k}_gb": v for k, v in values.items() if v is not None}


def estimate(spec: RunSpec, nodes: int | None = None, gpus_per_node: int | None = None,
             gpu_memory_gb: float | None = None,
             presets: dict[str, ModelPreset] | None = None) -> MemoryEstimate:
    """The plan for ``spec`` on ``nodes`` x ``gpus_per_node`` (default: the spec's own
    layout) against ``gpu_memory_gb`` (default: the spec's). One process per GPU."""
    nodes = nodes if nodes is not None else spec.nodes or 1
    gpus = gpus_per_node if gpus_per_node is not None else spec.gpus_per_node or 0
    memory = gpu_memory_gb if gpu_memory_gb is not None else spec.gpu_memory_gb
    world = nodes * max(gpus, 1)
    base = MemoryEstimate(run_name=spec.run_name, model=spec.model, method=spec.method,
                          rank=spec.rank, nodes=nodes, gpus_per_node=gpus,
                          zero_stage=spec.zero_stage, world_size=world)
    preset = (presets or load_presets()).get(spec.model)
    shape = ModelShape.from_preset(preset) if preset else None
    if shape is None:
        return base.model_copy(update={"note": f"{spec.model}: shape unknown "
                                       "(total_params/architecture in configs/models.yaml)"})
    bf16 = spec.bf16 != "off"
    trainable = shape.total_params if spec.method == "full" \
        else (spec.rank or 0) * shape.lora_params_per_rank
    weights, gradients, optimizer = model_state_bytes(shape, trainable, world,
                                                      spec.zero_stage, bf16)
    activations = activation_bytes(shape, spec.per_device_batch, spec.max_seq_length,
                                   spec.gradient_checkpointing, bf16)
    overhead = (FRAMEWORK_OVERHEAD_GB + (ZERO_BUCKETS_GB if spec.zero_stage else 0.0)) * GB
    total = weights + gradients + optimizer + activations + overhead
    if gpus == 0 or not memory:
        verdict: Verdict = "unknown"
        note = "no GPUs in this layout" if gpus == 0 else "GPU memory unknown " \
            "(resources.gpu_memory_gb in the cluster profile)"
    else:
        verdict = "predicted_oom" if total > memory * GB else "fits"
        note = ""
    return base.model_copy(update={
        "weights_gb": weights / GB, "gradients_gb": gradients / GB,
        "optimizer_gb": optimizer / GB, "activations_gb": activations / GB,
        "overhead_gb": overhead / GB, "total_gb": total / GB,
        "gpu_memory_gb": memory if gpus else None, "verdict": verdict, "note": note})


def plan_memory(specs: Iterable[RunSpec],
                resources: Callable[[RunSpec], Resources]) -> tuple[MemoryEstimate, ...]:
    """The plan of each spec on the resources its job gets (one process per GPU)."""
    presets = load_presets()
    out = []
    for spec in specs:
        res = resources(spec)
        out.append(estimate(spec, nodes=res.nodes, gpus_per_node=res.gpus_per_node,
                            gpu_memory_gb=res.gpu_memory_gb or spec.gpu_memory_gb,
                            presets=presets))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m contracts.memory --sweep NAME --cluster PROFILE``: the memory plan of a
    sweep preset on a cluster profile, as the sweep's plan task prints it (nothing is
    submitted; runs already finished in MLflow are not looked up)."""
    import argparse

    from contracts.conf import parse_conf
    from contracts.errors import SpecError
    from contracts.plan import plan_sweep
    from contracts.profiles import load_profile

    parser = argparse.ArgumentParser(prog="python -m contracts.memory",
                                     description=main.__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="reference", help="sweep preset (configs/sweeps)")
    parser.add_argument("--cluster", default="alps", help="cluster profile (configs/clusters)")
    args = parser.parse_args(argv)
    try:
        conf = parse_conf({"sweep": args.sweep, "cluster": args.cluster, "evaluate": False})
        plan = plan_sweep(conf, load_profile(conf.cluster), lambda specs: set())
    except SpecError as error:
        print(error)
        return 2
    print(plan.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
