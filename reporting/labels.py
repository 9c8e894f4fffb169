"""How numbers and names read in figures and text."""

from __future__ import annotations


def lr_label(lr: float) -> str:
    """1e-3 rather than 0.001: learning rates read as orders of magnitude."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def model_label(model: str) -> str:
    """apertus-8b -> Apertus 8B; other preset names unchanged."""
    if model.startswith("apertus-"):
        return "Apertus " + model.removeprefix("apertus-").upper()
    return model
