"""What the sweep's evaluation adds to each LEXam report: held-out SJP scores, the accuracy
difference to the base model with its bootstrap interval, and the runs' checkpoints.

The evaluation job (``evaluation.job``) calls three things: ``prepare`` with its targets
(reads each run's recorded split and lists its checkpoints, which become extra targets),
``final_step`` (where a final model's metrics are logged), and ``after_report`` once per
evaluated model, with the backend still pointing at that model. Every step of a run gets
the same metrics: ``lexam/*`` (from the report), ``lexam/accuracy_delta*`` (paired
bootstrap against the base model's answers to the same questions) and ``sjp/*``.
A failure here is reported and skipped: it never stops the LEXam evaluation of others.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from contracts.evaluation import EvalJobSpec
from contracts.names import TAG_LEXAM_EVAL_HASH, TAG_METHOD, TAG_MODEL, TAG_SWEEP_ID
from contracts.splits import SplitRecord
from evaluation.bootstrap import paired_difference
from evaluation.checkpoints import final_step, log_checkpoint_report, snapshots_of
from evaluation.metrics import QuestionResult
from evaluation.runner import EvalReport
from evaluation.sjp import SjpSet, build_sjp_set, common_split, log_sjp, score_sjp
from tracking.splits import read_split
from training.data import DataError

DEFAULT_MAX_SEQ_LENGTH = 1024
DELTA_KEYS = ("accuracy", "loglik_accuracy")


def _correctness(results: list[QuestionResult]) -> dict[str, dict[str, bool]]:
    """Per metric (official accuracy, log-likelihood accuracy): question -> right."""
    out: dict[str, dict[str, bool]] = {}
    generated = [r for r in results if r.answer_text is not None]
    if generated:
        out["accuracy"] = {r.prompt_id: r.correct for r in generated}
    scored = [r for r in results if r.loglik_correct is not None]
    if scored:
        out["loglik_accuracy"] = {r.prompt_id: bool(r.loglik_correct) for r in scored}
    return out


def delta_metrics(base: dict[str, dict[str, bool]], other: dict[str, dict[str, bool]]
                  ) -> dict[str, float]:
    """``lexam/{metric}_delta`` (fine-tune minus base) and its 95% bootstrap interval."""
    metrics: dict[str, float] = {}
    for key in DELTA_KEYS:
        if key in base and key in other:
            found = paired_difference(base[key], other[key])
            if found:
                delta, low, high, _ = found
                metrics.update({f"lexam/{key}_delta": delta, f"lexam/{key}_delta_low": low,
                                f"lexam/{key}_delta_high": high})
    return metrics


class EvalExtras:
    """Per evaluation job: split records, held-out sets, the base model's answers."""

    def __init__(self, client: Any, spec: EvalJobSpec, output_dir: Path) -> None:
        self.client = client
        self.spec = spec
        self.output_dir = output_dir
        self._runs: dict[str, Any] = {}
        self._splits: dict[str, SplitRecord | None] = {}
        self._sets: dict[tuple[str, int], SjpSet] = {}
        self._base_split: SplitRecord | None = None
        self._base_seq_length = DEFAULT_MAX_SEQ_LENGTH
        self._base_correct: dict[str, dict[str, bool]] | None = None
        self._base_hash: str | None = None

    def _run(self, run_id: str) -> Any:
        if run_id not in self._runs:
            self._runs[run_id] = self.client.get_run(run_id)
        return self._runs[run_id]

    def _seq_length(self, run_id: str) -> int:
        value = self._run(run_id).data.params.get("max_seq_length")
        return int(value) if value and value.isdigit() else DEFAULT_MAX_SEQ_LENGTH

    def final_step(self, run_id: str) -> int:
        return final_step(self._run(run_id))

    def prepare(self, targets: list[Any]) -> list[Any]:
        """Read the targets' splits; return their checkpoints as extra targets (copies of
        the run's target with ``step`` and the snapshot folder in ``checkpoint_path``)."""
        if self.spec.sjp:
            for target in targets:
                self._splits[target.run_id] = read_split(self.client, target.run_id)
            records = [r for r in self._splits.values() if r is not None and r.n_heldout]
            self._base_split = common_split(records)
            if self._base_split is not None:
                owner = next(t.run_id for t in targets
                             if self._splits.get(t.run_id) is self._base_split)
                self._base_seq_length = self._seq_length(owner)
            print(f"[evaluation] held-out SJP: {len(records)} of {len(targets)} run(s) "
                  "recorded a split", file=sys.stderr)
        if not self.spec.checkpoints:
            return []
        extra = []
        for target in targets:
            for step, folder in snapshots_of(self._run(target.run_id)):
                extra.append(target.model_copy(update={
                    "step": step, "checkpoint_path": str(folder), "model_uri": None}))
        print(f"[evaluation] {len(extra)} checkpoint(s) to evaluate next to the final models",
              file=sys.stderr)
        return extra

    # -- after each evaluated model -----------------------------------------------------

    def after_report(self, report: EvalReport, run_id: str, backend: Any, *,
                     step: int | None = None, baseline: bool = False) -> None:
        """Log what comes with ``report``: a checkpoint's metrics at its step, the delta to
        the base model, held-out SJP. ``step`` None: the run's final model."""
        at = 0 if baseline else (self.final_step(run_id) if step is None else step)
        if step is not None:
            log_checkpoint_report(self.client, run_id, report, step)
        correct = _correctness(report.results)
        if baseline:
            self._base_correct, self._base_hash = correct, report.eval_hash
        else:
            self._log_delta(run_id, report, correct, at)
        if self.spec.sjp:
            self._log_sjp(run_id, backend, at, baseline, details=step is None)

    def _base_answers(self, report: EvalReport) -> dict[str, dict[str, bool]] | None:
        """The base model's answers on this evaluation set: from this job, else from the
        baseline run's details (evaluated earlier on exactly this set)."""
        if self._base_correct is not None and self._base_hash == report.eval_hash:
            return self._base_correct
        if self._base_hash == report.eval_hash:
            return None  # looked up before and not found
        self._base_hash, self._base_correct = report.eval_hash, None
        run = self._baseline_run(report.eval_hash)
        if run is None:
            return None
        with tempfile.TemporaryDirectory(prefix="lexam-base-") as folder:
            local = self.client.download_artifacts(run.info.run_id, "lexam/details.json", folder)
            details = json.loads(Path(local).read_text())
        self._base_correct = _correctness([QuestionResult.model_validate(row)
                                           for row in details])
        return self._base_correct

    def _baseline_run(self, eval_hash: str) -> Any | None:
        sweep_id = self.spec.sweep_id
        if not sweep_id:
            return None
        from tracking.store import ensure_experiment

        found = self.client.search_runs(
            [ensure_experiment(self.client, self.spec.experiment)],
            filter_string=(f"tags.{TAG_SWEEP_ID} = '{sweep_id}' and tags.{TAG_MODEL} = "
                           f"'{self.spec.model}' and tags.{TAG_METHOD} = 'base' and "
                           f"tags.{TAG_LEXAM_EVAL_HASH} = '{eval_hash}'"), max_results=1)
        return found[0] if found else None

    def _log_delta(self, run_id: str, report: EvalReport, correct: dict[str, dict[str, bool]],
                   step: int) -> None:
        from mlflow.entities import Metric

        base = self._base_answers(report)
        if not base:
            return
        metrics = delta_metrics(base, correct)
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step)
                                               for k, v in metrics.items()])

    def _log_sjp(self, run_id: str, backend: Any, step: int, baseline: bool,
                 details: bool) -> None:
        record = self._base_split if baseline else self._splits.get(run_id)
        if record is None or not record.n_heldout:
            return
        length = self._base_seq_length if baseline else self._seq_length(run_id)
        try:
            key = (record.split_hash, length)
            if key not in self._sets:
                self._sets[key] = build_sjp_set(record, backend.tokenizer, length,
                                                self.spec.sjp_max_cases)
            report = score_sjp(backend, self._sets[key], step)
        except (DataError, ValueError, OSError) as error:
            print(f"[evaluation] held-out SJP skipped for run {run_id}: {error}",
                  file=sys.stderr)
            return
        if report is None:
            print("[evaluation] held-out SJP skipped: the backend cannot score continuations",
                  file=sys.stderr)
            return
        report.write_json(self.output_dir / f"{run_id}-sjp-step{step}.json")
        log_sjp(self.client, run_id, report, details=details)
