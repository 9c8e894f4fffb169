"""One rule for numbers read from MLflow tables: a finite float, or None for missing,
NaN, infinite or non-numeric cells (so a run that logged nothing shows as a gap, not 0)."""

from __future__ import annotations

import math


def finite_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
