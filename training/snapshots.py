"""Checkpoints kept for evaluation: the weights of every Nth save, without optimizer state.

The Trainer keeps only its last two checkpoints (``save_total_limit``) and each holds the
optimizer state as well. For forgetting curves the evaluation needs the weights of earlier
saves: at every Nth save (``RunSpec.checkpoint_eval_every``) the checkpoint's weight,
config and tokenizer files are hard-linked (copied where links fail) into
``{run_dir}/snapshots/step-{N}``. Links cost no space while the Trainer's checkpoint
exists and keep the files when the Trainer rotates it away. A LoRA snapshot is an adapter
folder; a full fine-tune's is a whole model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger("lora_regret.training")

SNAPSHOTS_DIR = "snapshots"
# Trainer state that a model folder does not need.
SKIPPED = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state", "scaler")


def snapshots_dir(run_dir: Path) -> Path:
    return run_dir / SNAPSHOTS_DIR


def snapshot_step(folder: Path) -> int | None:
    """N of a complete ``step-N`` snapshot folder (weights and a config), else None."""
    name = folder.name
    if not name.startswith("step-") or not name[5:].isdigit():
        return None
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    config = (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()
    return int(name[5:]) if weights and config else None


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete snapshot under ``folder``, by step."""
    if not folder.is_dir():
        return []
    found = [(snapshot_step(p), p) for p in folder.iterdir() if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def keep_snapshot(checkpoint: Path, target: Path) -> bool:
    """Link the model files of ``checkpoint`` into ``target`` (atomically); False when the
    checkpoint holds no weights (a ZeRO-3 save without gathered weights)."""
    files = [p for p in checkpoint.iterdir()
             if p.is_file() and not p.name.startswith(SKIPPED)]
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        log.warning("checkpoint %s holds no weights to keep for evaluation", checkpoint)
        return False
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in files:
        try:
            os.link(path, partial / path.name)
        except OSError:
            shutil.copy2(path, partial / path.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return True


class SnapshotKeeper(TrainerCallback):
    """Keeps every ``every``-th save as a snapshot (main process only)."""

    def __init__(self, run_dir: Path, every: int, main_process: bool = True) -> None:
        self.folder = snapshots_dir(run_dir)
        self.run_dir = run_dir
        self.every = every
        self.main_process = main_process
        self.kept: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        if not self.main_process or not self.every or not args.save_steps:
            return
        if (step // int(args.save_steps)) % self.every:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
        if checkpoint.is_dir() and keep_snapshot(checkpoint, self.folder / f"step-{step}"):
            self.kept.append(step)
