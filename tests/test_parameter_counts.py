"""LoRA parameter counts on real Apertus shapes, built on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import ApertusConfig, ApertusForCausalLM

from contracts.presets import get_preset
from training.job import count_parameters


def lora_per_rank(hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> int:
    """Analytic count: r * (in + out) for q, k, v, o, up, down in every layer."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    per_layer = (hidden + hidden) + 2 * (hidden + kv) + (hidden + hidden) \
        + (hidden + inter) + (inter + hidden)
    return layers * per_layer


@pytest.mark.parametrize(("name", "per_rank"), [("apertus-8b", 2_490_368),
                                                ("apertus-70b", 12_288_000)])
@pytest.mark.parametrize("rank", [1, 64])
def test_lora_parameters_match_the_formula(name: str, per_rank: int, rank: int) -> None:
    preset = get_preset(name)
    arch = preset.architecture
    assert lora_per_rank(arch["hidden_size"], arch["intermediate_size"],
                         arch["num_hidden_layers"], arch["num_attention_heads"],
                         arch["num_key_value_heads"]) == per_rank == preset.lora_params_per_rank
    with torch.device("meta"):
        model = ApertusForCausalLM(ApertusConfig(**arch))
    assert count_parameters(model) == (preset.total_params, preset.total_params)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=32, target_modules="all-linear",
                          task_type="CAUSAL_LM"))
    trainable, total = count_parameters(peft_model)
    assert trainable == rank * per_rank
    assert total - trainable == preset.total_params
    if name == "apertus-8b" and rank == 64:
        assert round(100 * trainable / preset.total_params, 2) == 1.98
