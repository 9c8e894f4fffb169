"""How a training run ended: its outcome tag, the job's exit code, and the classification
of a job that the cluster ended (out of memory, time limit, node failure)."""

from __future__ import annotations

from typing import Literal

Outcome = Literal["running", "finished", "diverged", "oom", "failed"]
FINAL_OUTCOMES = frozenset({"finished", "diverged", "oom"})

# Exit codes of `python -m training` and `python -m evaluation`.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # invalid spec, arguments or data: nothing was started
EXIT_DIVERGED = 3  # a recorded result (NaN/inf loss), not a failure of the job
EXIT_OOM = 4  # the job caught an out-of-memory error and recorded it

EXIT_CODE_OUTCOMES: dict[int, Outcome] = {EXIT_OK: "finished", EXIT_DIVERGED: "diverged",
                                          EXIT_OOM: "oom"}
OUTCOME_EXIT_CODES = {outcome: code for code, outcome in EXIT_CODE_OUTCOMES.items()}

# Accelerator and host out-of-memory messages as they appear in a job log (also from
# ranks other than 0, whose errors the training job cannot record itself).
OOM_MARKERS = ("cuda out of memory", "torch.outofmemoryerror", "outofmemoryerror",
               "hip out of memory", "cublas_status_alloc_failed", "memoryerror",
               "cannot allocate memory", "exceeded memory limit", "oom-kill", "oom_kill")


def _is_oom(line: str) -> bool:
    low = line.lower()
    return any(marker in low for marker in OOM_MARKERS)


def classify(state: str, exit_code: int | None, log_tail: str) -> tuple[Outcome, str] | None:
    """(outcome, reason) for a job that did not succeed; None for a successful one."""
    if state == "COMPLETED":
        return None
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    if state == "OUT_OF_MEMORY":
        hint = next((ln for ln in reversed(lines) if _is_oom(ln)), "")
        return "oom", f"job state OUT_OF_MEMORY{': ' + hint if hint else ''}"[:4000]
    if exit_code == EXIT_DIVERGED:
        return "diverged", "the training loss became NaN/inf"
    for line in reversed(lines):
        if _is_oom(line):
            return "oom", f"job {state.lower()}, out of memory in the log: {line}"[:4000]
    code = "" if exit_code is None else f", exit code {exit_code}"
    last = f": {lines[-1]}" if lines else ""
    return "failed", f"job {state}{code}{last}"[:4000]
