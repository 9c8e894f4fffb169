"""Nightly re-evaluation of registered model versions (the logic behind ``lexam_nightly``).

Which versions: for every registered model ``lora-regret-*``, its latest version and every
version an alias points to. A version is skipped when its training run already carries
``lexam_eval_hash`` equal to tonight's evaluation set hash (same questions, same options),
unless forced. Each version is evaluated by ``python -m evaluation`` in a subprocess, so
torch and the model never load into the scheduler's worker process.

Planning imports no torch: it reads MLflow and hashes the evaluation set.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluation.data import HUB_REPO
from evaluation.runner import EvalOptions, build_eval_set

REGISTRY_PREFIX = "lora-regret-"
DEFAULT_DATA_ENV = "LORA_REGRET_LEXAM_DATA"


def default_data() -> str:
    return os.environ.get(DEFAULT_DATA_ENV, f"hub:{HUB_REPO}")


class NightlyConf(BaseModel):
    """The nightly run's settings (Airflow params: untrusted, validated here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    force: bool = False
    data: str = Field(default_factory=default_data)
    choices: Literal[4, 8, 16, 32] = 4
    max_questions: int | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0)
    languages: tuple[str, ...] | None = None
    max_new_tokens: int = Field(default=4096, gt=0, le=65536)
    batch_size: int = Field(default=8, gt=0, le=1024)
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    timeout_s: int = Field(default=6 * 3600, gt=0)

    def options(self) -> EvalOptions:
        return EvalOptions(data=self.data, choices=self.choices,
                           max_questions=self.max_questions, seed=self.seed,
                           languages=self.languages, max_new_tokens=self.max_new_tokens,
                           batch_size=self.batch_size)


def parse_conf(raw: dict[str, Any]) -> NightlyConf:
    """Params as given (None values mean 'default'); errors name each bad field."""
    cleaned = {key: value for key, value in raw.items() if value not in (None, "")}
    if isinstance(cleaned.get("languages"), str):
        cleaned["languages"] = [x.strip() for x in cleaned["languages"].split(",") if x.strip()]
    try:
        conf = NightlyConf.model_validate(cleaned)
        conf.options()
        return conf
    except ValidationError as error:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        raise ValueError("invalid lexam_nightly conf:\n" + "\n".join(lines)) from None


class VersionTask(BaseModel):
    """One registered version to evaluate tonight."""

    name: str
    version: str
    model: str
    method: str
    run_id: str
    aliases: list[str] = []
    checkpoint_path: str | None = None

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _chosen_versions(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version -> aliases, for the latest version and every aliased one."""
    registered = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    chosen: dict[str, list[str]] = {}
    if versions:
        latest = max(versions, key=lambda v: int(v.version))
        chosen[str(latest.version)] = []
    for alias, version in (registered.aliases or {}).items():
        chosen.setdefault(str(version), []).append(alias)
    return chosen


def plan_versions(conf: NightlyConf, client: MlflowClient | None = None
                  ) -> tuple[str, list[VersionTask]]:
    """(tonight's eval set hash, the versions that need evaluating)."""
    client = client or MlflowClient()
    eval_hash = build_eval_set(conf.options()).eval_hash
    tasks = []
    for registered in client.search_registered_models(f"name LIKE '{REGISTRY_PREFIX}%'"):
        for version, aliases in sorted(_chosen_versions(client, registered.name).items(),
                                       key=lambda item: int(item[0])):
            mv = client.get_model_version(registered.name, version)
            tags = mv.tags
            run_id = tags.get("run_id") or mv.run_id
            if not run_id or not tags.get("model"):
                print(f"[nightly] {registered.name}/{version}: no run_id/model tag, skipped",
                      file=sys.stderr)
                continue
            done = client.get_run(run_id).data.tags.get("lexam_eval_hash")
            if done == eval_hash and not conf.force:
                print(f"[nightly] {registered.name}/{version}: already evaluated on "
                      f"{eval_hash}, skipped", file=sys.stderr)
                continue
            tasks.append(VersionTask(
                name=registered.name, version=version, model=tags["model"],
                method=tags.get("method", ""), run_id=run_id, aliases=sorted(aliases),
                checkpoint_path=tags.get("checkpoint_path"),
            ))
    return eval_hash, tasks


def evaluation_command(task: VersionTask, conf: NightlyConf, output_json: str) -> list[str]:
    """``python -m evaluation`` for one version, as an argument list (no shell)."""
    if task.method == "full":
        if not task.checkpoint_path:
            raise ValueError(f"{task.model_uri}: full fine-tune without checkpoint_path tag")
        target = ["--model", task.checkpoint_path]
    else:
        target = ["--model", task.model, "--adapter", task.model_uri]
    cmd = [sys.executable, "-m", "evaluation", *target, "--run-id", task.run_id,
           "--data", conf.data, "--choices", str(conf.choices), "--seed", str(conf.seed),
           "--max-new-tokens", str(conf.max_new_tokens), "--batch-size", str(conf.batch_size),
           "--dtype", conf.dtype, "--output-json", output_json]
    if conf.max_questions:
        cmd += ["--max-questions", str(conf.max_questions)]
    if conf.languages:
        cmd += ["--languages", ",".join(conf.languages)]
    return cmd


def evaluate_version(task: VersionTask, conf: NightlyConf) -> dict[str, Any]:
    """Evaluate one version in a subprocess; tag the version; return its summary."""
    with tempfile.TemporaryDirectory(prefix="lexam-nightly-") as workdir:
        output = str(Path(workdir) / "report.json")
        cmd = evaluation_command(task, conf, output)
        print(f"[nightly] evaluating {task.model_uri} into run {task.run_id}", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=conf.timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{task.model_uri}: evaluation exited {done.returncode}:\n"
                               f"{done.stderr[-4000:]}")
        report = json.loads(Path(output).read_text())
    client = MlflowClient()
    client.set_model_version_tag(task.name, task.version, "lexam_eval_hash", report["eval_hash"])
    return {"model_uri": task.model_uri, "run_id": task.run_id,
            "eval_hash": report["eval_hash"],
            "metrics": {k: v for k, v in report["metrics"].items() if math.isfinite(v)}}
