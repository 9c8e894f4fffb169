"""The job's layout as launched (nodes, processes per node), for runs whose spec left it to
the cluster profile: the MLflow tags ``nodes`` and ``gpus_per_node`` then say what ran.

torchrun sets GROUP_WORLD_SIZE (launcher agents, one per node) and LOCAL_WORLD_SIZE;
SLURM sets SLURM_NNODES. Reading the environment keeps this free of torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from contracts.spec import RunSpec


def measured_layout(environ: Mapping[str, str] | None = None,
                    accelerator: bool = False) -> tuple[int, int]:
    """(nodes, accelerators per node) of this process's job; 0 accelerators on CPU."""
    env = os.environ if environ is None else environ
    nodes = env.get("GROUP_WORLD_SIZE") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
    local = env.get("LOCAL_WORLD_SIZE") or "1"
    try:
        n, per_node = int(nodes or 1), int(local)
    except ValueError:
        n, per_node = 1, 1
    return n, per_node if accelerator else 0


def layout_tags(spec: RunSpec, environ: Mapping[str, str] | None = None,
                accelerator: bool = False) -> dict[str, str]:
    """The spec's own layout when it names one, else the measured one."""
    nodes, gpus = measured_layout(environ, accelerator)
    return {
        "nodes": str(spec.nodes if spec.nodes is not None else nodes),
        "gpus_per_node": str(spec.gpus_per_node if spec.gpus_per_node is not None else gpus),
    }
