"""What each rank holds right after loading a model, ZeRO-3 (zero.Init) against ZeRO-2.

Runs the real job (``torchrun -m training``, 2 CPU ranks) on smollm2-135m for one LoRA
step under each stage, into a throw-away MLflow store, and reads back the ``memory/load_*``
metrics the job logs right after ``from_pretrained``: parameter MB on the most loaded rank,
the whole model's parameter MB, and the ranks' peak host RSS at that point.

    .venv/bin/python benchmarks/zero3_load.py --out benchmarks/results/zero3_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KEYS = ("memory/load_param_mb_per_rank", "memory/load_param_mb_model",
        "memory/load_param_fraction", "memory/load_peak_host_mb", "engine/world_size")


def measure(stage: int, model: str, folder: Path) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from contracts.spec import RunSpec

    uri = f"sqlite:///{folder}/mlflow.db"
    spec = RunSpec(model=model, method="lora", rank=4, lr=1e-4, max_steps=1,
                   per_device_batch=1, grad_accum=1, max_seq_length=256, bf16="off",
                   data={"source": "synthetic", "synthetic_size": 8}, zero_stage=stage,
                   save_steps=100, output_dir=str(folder / "runs"), sweep_id=f"load-z{stage}")
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / f"z{stage}.yaml"
    spec_file.write_text(spec.to_yaml())
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
           "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", "-m", "training", "--spec", str(spec_file),
                    "--no-register"], env=env, check=True, capture_output=True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    [run] = client.search_runs([experiment.experiment_id], f"tags.sweep_id = '{spec.sweep_id}'")
    return {k: run.data.metrics[k] for k in KEYS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from training.models import resolve_model_path

    resolve_model_path(args.model)  # prepared once, outside the measurement
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (2, 3):
            results[f"zero{stage}"] = measure(stage, args.model, Path(tmp) / f"z{stage}")
    print("| stage | param MB per rank | model param MB | fraction | peak host MB at load |")
    print("|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['memory/load_param_mb_per_rank']:.0f} | "
              f"{m['memory/load_param_mb_model']:.0f} | {m['memory/load_param_fraction']:.3f} "
              f"| {m['memory/load_peak_host_mb']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "ranks": 2, **results},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
