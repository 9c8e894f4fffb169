"""How a training run ended: its outcome tag, the job's exit code, and the classification
of a job that the cluster ended (out of memory, time limit, node failure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

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


JOB_SCRIPT_PREFIX = "[cluster_jobs]"  # lines the job script itself writes into the log


def _is_oom(line: str) -> bool:
    low = line.lower()
    return any(marker in low for marker in OOM_MARKERS)


def classify(state: str, exit_code: int | None, log_tail: str) -> tuple[Outcome, str] | None:
    """(outcome, reason) for a job that did not succeed; None for a successful one."""
    if state == "COMPLETED":
        return None
    # The job script's own lines ("[cluster_jobs] exit code 1 at ...") say nothing new.
    lines = [ln.strip() for ln in log_tail.splitlines()
             if ln.strip() and not ln.strip().startswith(JOB_SCRIPT_PREFIX)]
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


# -- a sweep's runs, as the sweep DAG reports them ----------------------------------------

class RunResult(BaseModel):
    """What became of one run of a sweep trigger (from its job's result)."""

    model_config = ConfigDict(frozen=True)

    name: str
    outcome: Outcome
    state: str = ""
    job_id: str = ""
    reason: str = ""


class SweepCounts(BaseModel):
    """How a sweep trigger's runs ended; the sweep-results asset event carries these.
    Only ``failed`` is a failure of the sweep: the others are results (an OOM layout, a
    diverged learning rate)."""

    model_config = ConfigDict(frozen=True)

    finished: int = 0
    diverged: int = 0
    oom: int = 0
    failed: int = 0


class SweepSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    counts: SweepCounts
    not_finished: tuple[RunResult, ...] = ()

    @property
    def failed(self) -> tuple[RunResult, ...]:
        return tuple(r for r in self.not_finished if r.outcome == "failed")


NO_RESULT = "no result: the job was never sensed to its end (see the task's log)"
_EMPTY_REASONS = {"", "None", "(null)"}


def run_result(name: str, result: dict[str, Any] | None) -> RunResult:
    """One run's outcome from its job result (the cluster job operator's ``job_result``);
    a missing result (never submitted, sensing gave up) is a failure."""
    if not result:
        return RunResult(name=name, outcome="failed", state="UNKNOWN", reason=NO_RESULT)
    state = str(result.get("state") or "UNKNOWN")
    verdict = classify(state, result.get("exit_code"), result.get("log_tail") or "")
    outcome, reason = verdict if verdict is not None else ("finished", "")
    scheduler_reason = str(result.get("reason") or "")
    if verdict is not None and scheduler_reason not in _EMPTY_REASONS \
            and scheduler_reason not in reason:
        reason = f"{reason} ({scheduler_reason})"
    return RunResult(name=name, outcome=outcome, state=state,
                     job_id=str(result.get("job_id") or ""), reason=reason[:4000])


def summarize(results: Iterable[tuple[str, dict[str, Any] | None]]) -> SweepSummary:
    """Counts per outcome and the runs that did not finish, in the order given."""
    every = [run_result(name, result) for name, result in results]
    counts = Counter(r.outcome for r in every)
    return SweepSummary(
        counts=SweepCounts(**{k: counts.get(k, 0) for k in SweepCounts.model_fields}),
        not_finished=tuple(r for r in every if r.outcome != "finished"))
