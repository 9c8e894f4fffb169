"""Training tokens/s on CPU: lora-regret's job against a plain TRL SFTTrainer script.

Both sides train smollm2-135m on the same formatted SJP cases (the real sample in
../shared/data when present, else synthetic cases) with the same batch, sequence length
and number of steps. lora-regret's side is the real job (``training.job.run_training``,
MLflow included); the plain side is SFTTrainer with TRL's defaults for everything else
(bf16 and gradient checkpointing as TRL chooses, LoRA through ``peft_config``).
lora-regret's side runs once per ``--bf16`` setting (default ``on,off``: bfloat16 autocast
and float32), so the rule behind ``bf16: auto`` (native bf16 only) can be checked here.

Throughput is measured the same way on both sides: training tokens counted by TRL
(``num_tokens``) between consecutive logged steps, divided by the wall time between them;
the median over steps after the first two (warm-up) is reported.

    .venv/bin/python benchmarks/train_throughput.py --steps 12 \
        --out benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SJP_SAMPLE = REPO.parent / "shared" / "data" / "sjp_sample" / "cases.jsonl"


class StepTimer:
    """Tokens/s between consecutive logs, from TRL's running num_tokens."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "num_tokens" in logs:
                    timer.points.append((time.monotonic(), float(logs["num_tokens"])))

        self.points: list[tuple[float, float]] = []
        self.callback = _Callback()

    def median_tokens_per_second(self, skip: int = 2) -> float:
        rates = [(b[1] - a[1]) / (b[0] - a[0])
                 for a, b in zip(self.points, self.points[1:], strict=False)]
        return statistics.median(rates[skip:])


def plain_trl(method: str, model_path: str, dataset, args: argparse.Namespace,
              workdir: Path) -> float:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    timer = StepTimer()
    config = SFTConfig(output_dir=str(workdir / f"plain-{method}"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch, max_length=args.seq_len,
                       learning_rate=1e-4, logging_steps=1, report_to="none",
                       save_strategy="no", use_cpu=True, disable_tqdm=True)
    peft = LoraConfig(r=args.rank, lora_alpha=32, target_modules="all-linear",
                      task_type="CAUSAL_LM") if method == "lora" else None
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=dataset,
                         peft_config=peft, callbacks=[timer.callback])
    trainer.train()
    return timer.median_tokens_per_second()


def lora_regret(method: str, args: argparse.Namespace, data_source: str,
                workdir: Path, bf16: str = "auto") -> float:
    from mlflow.tracking import MlflowClient

    from contracts.spec import RunSpec
    from training.job import run_training

    spec = RunSpec(model="smollm2-135m", method=method, lr=1e-4,
                   rank=args.rank if method == "lora" else None, max_steps=args.steps,
                   per_device_batch=args.batch, grad_accum=1, max_seq_length=args.seq_len,
                   data={"source": data_source}, output_dir=str(workdir / "runs"),
                   save_steps=10_000, sweep_id="benchmark", bf16=bf16)
    outcome = run_training(spec, register=False)
    history = MlflowClient().get_metric_history(outcome.run_id, "train/tokens_per_second")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    return statistics.median(rates[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--bf16", default="on,off",
                        help="lora-regret's bf16 settings to measure (auto: native bf16 only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from contracts.spec import DataSpec
    from training.data import load_cases
    from training.formatting import SftFormatter
    from training.models import resolve_model_path

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    data_source = str(SJP_SAMPLE) if SJP_SAMPLE.is_file() else "synthetic"
    model_path = resolve_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    cases = load_cases(DataSpec(source=data_source))
    dataset = SftFormatter(tokenizer, args.seq_len).format(cases)

    from training.devices import native_bf16

    results = {"data": data_source, "steps": args.steps, "batch": args.batch,
               "seq_len": args.seq_len, "rank": args.rank, "threads": torch.get_num_threads(),
               "native_bf16": native_bf16(), "tokens_per_second": {}}
    for method in args.methods.split(","):
        plain = plain_trl(method, model_path, dataset, args, workdir)
        entry: dict[str, float] = {"plain_trl_defaults": round(plain, 1)}
        for bf16 in args.bf16.split(","):
            ours = lora_regret(method, args, data_source, workdir, bf16=bf16)
            entry[f"lora_regret_bf16_{bf16}"] = round(ours, 1)
            entry[f"ratio_bf16_{bf16}"] = round(ours / plain, 2)
            print(f"{method}: lora-regret (bf16 {bf16}) {ours:.0f} tok/s, plain TRL "
                  f"{plain:.0f} tok/s, ratio {ours / plain:.2f}", flush=True)
        results["tokens_per_second"][method] = entry
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
