"""What the processes of one training job agree on, and what DeepSpeed says it ran.

Every process of a ``torchrun``/``srun`` job runs the training job. Only rank 0 talks to
MLflow: ``on_rank_zero`` runs a step there and hands its result, or its failure, to every
rank, so the other ranks never open the store (two ranks creating a new SQLite schema at
once crash) and stop with rank 0's error instead of waiting in a collective until a
timeout. ``engine_facts`` reads the ZeRO stage, world size and partition sizes from the
DeepSpeed engine itself (not from the spec), ``parameter_memory`` what each rank holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class RankZeroFailed(RuntimeError):
    """Raised on ranks other than 0 when rank 0's step failed (its error in the message)."""


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _group_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def on_rank_zero(step: Callable[[], T]) -> T | None:
    """``step()`` on rank 0; its result on rank 0, None elsewhere. Collective: every rank
    calls it. If rank 0 fails, rank 0 re-raises and every other rank raises
    RankZeroFailed naming the error."""
    if not _group_ready():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError("on_rank_zero: WORLD_SIZE > 1 but no process group is set up "
                               "yet (build the TrainingArguments first)")
        return step()
    rank = torch.distributed.get_rank()
    result: T | None = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            result = step()
        except BaseException as error:  # re-raised below, after the others are told
            failure = error
    verdict: list[Any] = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    torch.distributed.broadcast_object_list(verdict, src=0)
    if failure is not None:
        raise failure
    if verdict[0] is not None:
        raise RankZeroFailed(f"rank 0 failed, so rank {rank} stops: {verdict[0]}")
    return result


def attach_deepspeed() -> None:
    """Let DeepSpeed's communication layer use the process group the training arguments set
    up, so that ``zero.Init`` (inside ``from_pretrained``) partitions over the real world
    size instead of a world of 1."""
    import deepspeed

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend()
                               if torch.distributed.is_initialized() else None)


def gather(value: T) -> list[T]:
    """``value`` from every rank, in rank order (a list of one without a process group)."""
    if not _group_ready():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


# -- memory held right after loading ----------------------------------------------------

def _local_numel(parameter: torch.nn.Parameter) -> int:
    """Elements this rank holds: a ZeRO-3 parameter keeps only its partition (ds_tensor)."""
    shard = getattr(parameter, "ds_tensor", None)
    return shard.numel() if shard is not None else parameter.numel()


def parameter_memory(model: torch.nn.Module) -> dict[str, float]:
    """Parameter bytes on the most loaded rank against the whole model's (collective).

    Under ZeRO-3 the model is created inside ``zero.Init`` and each rank holds about
    1/world of it from the start; otherwise every rank holds all of it."""
    held = whole = 0
    for parameter in model.parameters():
        size = parameter.element_size()
        held += _local_numel(parameter) * size
        whole += getattr(parameter, "ds_numel", parameter.numel()) * size
    per_rank = gather(held)
    return {
        "memory/load_param_mb_per_rank": max(per_rank) / 2**20,
        "memory/load_param_mb_model": whole / 2**20,
        "memory/load_param_fraction": max(per_rank) / whole if whole else None,
        "memory/load_peak_host_mb": max(gather(_peak_host_mb())),
    }


def _peak_host_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the engine that ran -----------------------------------------------------------------

@dataclass(frozen=True)
class EngineFacts:
    """What ran, as the engine reports it."""

    engine: str  # deepspeed | ddp | single
    world_size: int
    zero_stage: int | None
    optimizer_partition: int  # trainable elements whose optimizer state a rank keeps (max)
    trainable: int
    param_partition: int | None  # ZeRO-3: parameter elements a rank keeps (max)
    deepspeed_version: str = ""

    def tags(self) -> dict[str, str]:
        tags = {"engine": self.engine,
                "engine/zero_stage": "" if self.zero_stage is None else str(self.zero_stage)}
        if self.deepspeed_version:
            tags["engine/deepspeed_version"] = self.deepspeed_version
        return tags

    def metrics(self) -> dict[str, float | None]:
        return {
            "engine/world_size": float(self.world_size),
            "engine/optimizer_partition_params": float(self.optimizer_partition),
            "engine/optimizer_partition_fraction":
                self.optimizer_partition / self.trainable if self.trainable else None,
            "engine/param_partition_params":
                None if self.param_partition is None else float(self.param_partition),
        }


def _optimizer_partition(engine: Any, stage: int, trainable: int) -> int:
    optimizer = engine.optimizer
    if stage in (1, 2):  # DeepSpeedZeroOptimizer: one flat fp32 partition per group
        return int(sum(optimizer.partition_size))
    if stage == 3:  # DeepSpeedZeroOptimizer_Stage3
        return int(sum(t.numel() for t in optimizer.fp32_partitioned_groups_flat))
    return trainable  # stage 0: every rank keeps all of it


def engine_facts(trainer: Any) -> EngineFacts:
    """The engine behind ``trainer`` after training (collective: every rank calls it)."""
    wrapped = trainer.model_wrapped
    trainable = sum(getattr(p, "ds_numel", p.numel())
                    for p in trainer.model.parameters() if p.requires_grad)
    world = torch.distributed.get_world_size() if _group_ready() else 1
    if getattr(trainer, "is_deepspeed_enabled", False):
        import deepspeed

        engine = trainer.deepspeed
        stage = int(engine.zero_optimization_stage())
        mine = _optimizer_partition(engine, stage, trainable)
        params = (sum(_local_numel(p) for p in engine.module.parameters())
                  if stage == 3 else None)
        return EngineFacts("deepspeed", int(engine.world_size), stage, max(gather(mine)),
                           trainable, None if params is None else max(gather(params)),
                           deepspeed.__version__)
    kind = "ddp" if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else "single"
    return EngineFacts(kind, world, None, trainable, trainable, None)
