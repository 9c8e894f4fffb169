"""One training run of one spec: SJP data -> chat SFT -> TRL SFTTrainer -> MLflow.

Works the same on one CPU and on many GPUs: under ``accelerate launch``/``torchrun``
every process runs this, only rank 0 talks to MLflow (the others never open the store and
stop with rank 0's error if it fails), and DeepSpeed gets the ZeRO config the spec names.
The training arguments are built before the model, so that under ZeRO-3 ``from_pretrained``
creates the model inside ``zero.Init``: each rank holds its shard from the start instead of
a full float32 copy. What DeepSpeed itself reports (stage, world size, partitions) and what
each rank held after loading go into the run (``engine/*``, ``memory/load_*``). A job that
is restarted with the same spec resumes from the last checkpoint in the spec's run folder
and continues the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from contracts.names import TAG_SNAPSHOTS
from contracts.paths import configs_dir
from contracts.redact import redact_text
from contracts.spec import RunSpec
from contracts.splits import SplitRecord
from training.data import DataError
from training.devices import native_bf16
from training.distributed import attach_deepspeed, engine_facts, parameter_memory
from training.formatting import SftFormatter
from training.layout import layout_tags
from training.models import resolve_model_path
from training.snapshots import SnapshotKeeper, snapshots_dir
from training.split import split_cases
from training.tracking import (
    RUN_ID_FILE,
    MetricBuffer,
    MlflowStepLogger,
    final_loss,
    finish_run,
    open_run,
    system_metrics_monitor,
)

log = logging.getLogger("lora_regret.training")
# The final model's logits on a fixed probe, computed by the training processes themselves:
# a saved or registered model must give the same (tests compare them after a reload).
PROBE_FILE = "probe_logits.safetensors"
PROBE_TEXT = "The Federal Supreme Court dismissed the appeal."
Outcome = Literal["finished", "diverged", "oom", "failed"]


@dataclass(frozen=True)
class TrainOutcome:
    outcome: Outcome
    run_id: str | None
    final_loss: float | None
    model_uri: str | None = None
    registered_version: str | None = None
    steps: int = 0


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def bf16_enabled(setting: str) -> bool:
    """bf16 when asked, or ('auto') where the hardware computes in it natively."""
    if setting != "auto":
        return setting == "on"
    return native_bf16()


def build_sft_config(spec: RunSpec, run_dir: Path, validate: bool = False):
    """The trainer's settings; ``validate``: a validation loss on the held-out cases at
    every checkpoint save (``eval/loss``)."""
    from trl import SFTConfig

    deepspeed = (
        str(configs_dir() / "deepspeed" / f"zero{spec.zero_stage}.json")
        if spec.zero_stage is not None else None
    )
    return SFTConfig(
        output_dir=str(run_dir),
        learning_rate=spec.lr,
        lr_scheduler_type=spec.lr_schedule,
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of all steps
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        per_device_train_batch_size=spec.per_device_batch,
        gradient_accumulation_steps=spec.grad_accum,
        max_length=spec.max_seq_length,
        activation_checkpointing=spec.gradient_checkpointing,
        bf16=bf16_enabled(spec.bf16),
        use_cpu=not torch.cuda.is_available(),
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the divergence check
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if validate else "no",
        eval_steps=spec.save_steps if validate else None,
        per_device_eval_batch_size=spec.per_device_batch,
        report_to="none",
        deepspeed=deepspeed,
        completion_only_loss=True,
        disable_tqdm=not sys.stderr.isatty(),
        dataset_num_proc=None,
    )


def build_peft_config(spec: RunSpec):
    if spec.method != "lora":
        return None
    from peft import LoraConfig

    targets = (spec.target_modules if spec.target_modules == "all-linear"
               else list(spec.target_modules))
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); under ZeRO-3 parameters are sharded, ds_numel has the size."""
    trainable = total = 0
    for parameter in model.parameters():
        n = getattr(parameter, "ds_numel", parameter.numel())
        total += n
        if parameter.requires_grad:
            trainable += n
    return trainable, total


def peak_memory_mb() -> dict[str, float]:
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    memory = {"memory/peak_host_mb": host}
    if torch.cuda.is_available():
        memory["memory/peak_accelerator_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint whose save finished (trainer_state.json is written last), so
    a job killed while saving resumes from the one before."""
    done = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            and p.name.split("-")[-1].isdigit()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/accelerator OOM (torch.OutOfMemoryError or its message) or host MemoryError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message)


@dataclass(frozen=True)
class TrainingInputs:
    """What a run trains on, loaded and checked before anything is created."""

    model_path: str
    tokenizer: Any
    dataset: Any
    eval_dataset: Any = None  # held-out cases for the validation loss (None: none held out)
    split: SplitRecord | None = None


def prepare_inputs(spec: RunSpec) -> TrainingInputs:
    """The model's tokenizer and the formatted cases; DataError or SpecError (exit 2) when
    they cannot be had, before any MLflow run or run folder exists."""
    model_path = resolve_model_path(spec.model, spec.model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise DataError(f"model: cannot load the tokenizer of {model_path!r}: "
                        f"{str(error).splitlines()[0][:300]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    split = split_cases(spec.data, seed=spec.seed)
    formatter = SftFormatter(tokenizer, spec.max_seq_length)
    dataset = formatter.format(split.train)
    eval_dataset = None
    if split.heldout is not None:
        heldout = split.heldout.select(range(min(len(split.heldout), spec.eval_max_cases)))
        eval_dataset = formatter.format(heldout)
    return TrainingInputs(model_path, tokenizer, dataset, eval_dataset, split.record)


def run_training(spec: RunSpec, job_id: str | None = None, register: bool = True,
                 inputs: TrainingInputs | None = None) -> TrainOutcome:
    """Train one spec to the end (or to divergence); record everything in MLflow.

    Outcomes: ``finished``; ``diverged`` (non-finite loss, training stopped early);
    ``oom`` (out of memory, recorded with the run's configuration); other errors mark
    the run ``failed`` and propagate. Bad data or a bad model path raise before anything
    is created.
    """
    started = time.monotonic()
    inputs = inputs or prepare_inputs(spec)
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # First: the process group (all ranks) and the DeepSpeed config the model loads under.
    args = build_sft_config(spec, run_dir, validate=inputs.eval_dataset is not None)
    log.info("%d training process(es)", args.world_size)  # sets up the process group
    if spec.zero_stage is not None:
        attach_deepspeed()
    main = is_main_process()
    resumed = (run_dir / RUN_ID_FILE).is_file()
    run_id = open_run(spec, run_dir, job_id)
    monitor = system_metrics_monitor(run_id, resumed) if main and run_id else None
    try:
        if main and run_id and inputs.split is not None:
            from mlflow.tracking import MlflowClient

            from tracking.splits import log_split

            log_split(MlflowClient(), run_id, inputs.split)  # which cases it never sees
        return _train(spec, inputs, args, run_dir, run_id if main else None, started,
                      register)
    except BaseException as error:
        if main and run_id:
            oom = is_out_of_memory(error)
            finish_run(run_id, "oom" if oom else "failed", peak_memory_mb(),
                       {"failure_reason": redact_text(f"{type(error).__name__}: {error}")[:4000],
                        **layout_tags(spec, accelerator=torch.cuda.is_available())})
            if oom:
                log.error("out of memory: %s", error)
                return TrainOutcome("oom", run_id, None)
        raise
    finally:
        if monitor is not None:
            monitor.finish()


def _train(spec: RunSpec, inputs: TrainingInputs, args, run_dir: Path, run_id: str | None,
           started: float, register: bool) -> TrainOutcome:
    from trl import SFTTrainer

    model_path, tokenizer, dataset = inputs.model_path, inputs.tokenizer, inputs.dataset
    # Under ZeRO-3 (args alive) this runs inside zero.Init: every rank loads its shard.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    load_memory = parameter_memory(model)

    samples_per_step = spec.per_device_batch * spec.grad_accum * args.world_size
    logger = MlflowStepLogger(MetricBuffer(run_id) if run_id else None, samples_per_step)
    keeper = SnapshotKeeper(run_dir, spec.checkpoint_eval_every, is_main_process())
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         eval_dataset=inputs.eval_dataset,
                         processing_class=tokenizer, peft_config=build_peft_config(spec),
                         callbacks=[logger, keeper])
    trainable, total = count_parameters(trainer.model)
    if spec.method == "lora":
        total -= trainable  # the fraction is measured against the base model's size
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint:
        log.warning("resuming from %s", checkpoint)
    load_time = time.monotonic() - started
    result = trainer.train(resume_from_checkpoint=checkpoint)
    facts = engine_facts(trainer)

    diverged = logger.diverged_at is not None
    loss = final_loss(logger.losses, spec.final_loss_window)
    final_dir = run_dir / "final"
    if not diverged:
        # The adapter, or the full weights (ZeRO-3: gathered into one 16-bit state dict).
        trainer.save_model(str(final_dir))
        _save_probe(trainer, tokenizer, run_dir / PROBE_FILE)
    with _gathered_trainable(trainer):  # ZeRO-3: the adapter whole on every rank
        if run_id is None:  # not the main process: MLflow is rank 0's job
            return TrainOutcome("diverged" if diverged else "finished", None, loss,
                                steps=result.global_step)
        model_uri = version = None
        if register and not diverged and spec.method == "lora":
            model_uri, version = _register_lora(spec, run_id, trainer, tokenizer, model_path)

    runtime = time.monotonic() - started
    devices = args.world_size if torch.cuda.is_available() else 0
    summary = {
        "train/final_loss": loss,
        "train/runtime_s": runtime,
        "train/time_to_first_step_s": load_time + (logger.first_step_at or 0.0),
        "train/world_size": float(args.world_size),
        "train/global_steps": float(result.global_step),
        "train/samples_per_second_mean": result.metrics.get("train_samples_per_second"),
        "model/trainable_params": float(trainable),
        "model/total_params": float(total),
        "model/trainable_fraction": trainable / total if total else None,
        "cost/gpu_hours": runtime * devices / 3600,
        **peak_memory_mb(),
        **load_memory,
        **facts.metrics(),
    }
    tags = {**layout_tags(spec, accelerator=torch.cuda.is_available()), **facts.tags()}
    if spec.checkpoint_eval_every:
        tags[TAG_SNAPSHOTS] = str(snapshots_dir(run_dir).resolve())
    if diverged:
        tags["diverged_at_step"] = str(logger.diverged_at)
    elif spec.method == "full":
        tags["checkpoint_path"] = str(final_dir.resolve())
        if register:
            from training.registry import register_checkpoint

            model_uri, version = register_checkpoint(spec, run_id, final_dir)
    if model_uri:
        tags["registered_model_uri"] = model_uri
    outcome: Outcome = "diverged" if diverged else "finished"
    finish_run(run_id, outcome, summary, tags)
    return TrainOutcome(outcome, run_id, loss, model_uri, version, result.global_step)


def _gathered_trainable(trainer):
    """Under ZeRO-3, the trainable parameters gathered whole on every rank (collective);
    elsewhere nothing to do. Only trainable ones: a LoRA base stays sharded."""
    import contextlib

    if not getattr(trainer, "is_deepspeed_enabled", False) or \
            trainer.deepspeed.zero_optimization_stage() != 3:
        return contextlib.nullcontext()
    import deepspeed

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _save_probe(trainer, tokenizer, path: Path) -> None:
    """The trained model's logits on PROBE_TEXT (every rank runs the forward: under ZeRO-3
    it gathers the layers); rank 0 writes them beside the run's checkpoints."""
    from safetensors.torch import save_file

    model = trainer.model
    inputs = tokenizer(PROBE_TEXT, return_tensors="pt").to(trainer.args.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits.float().cpu()
    model.train(was_training)
    if is_main_process():
        save_file({"input_ids": inputs["input_ids"].cpu().contiguous(),
                   "logits": logits.contiguous()}, str(path))


def _register_lora(spec: RunSpec, run_id: str, trainer, tokenizer, model_path: str):
    from training.registry import register_adapter

    model = trainer.accelerator.unwrap_model(trainer.model)
    return register_adapter(spec, run_id, model, tokenizer, base_model_path=model_path)
