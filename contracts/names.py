"""Names shared through MLflow and Airflow: experiments, tags, metric prefixes, registry
names, the sweep-results asset. See docs/CONVENTIONS.md for what each one holds."""

from __future__ import annotations

DEFAULT_EXPERIMENT = "lora-regret"

# Run tags.
TAG_SWEEP_ID = "sweep_id"
TAG_SPEC_HASH = "spec_hash"
TAG_MODEL = "model"
TAG_METHOD = "method"
TAG_OUTCOME = "outcome"
TAG_JOB_ID = "job_id"
TAG_FAILURE_REASON = "failure_reason"
TAG_JOB_STATE = "job_state"
TAG_CHECKPOINT_PATH = "checkpoint_path"
TAG_REGISTERED_MODEL_URI = "registered_model_uri"
TAG_LEXAM_EVAL_HASH = "lexam_eval_hash"
TAG_KIND = "kind"
TAG_MEMORY_PLAN = "memory_plan"  # fits | predicted_oom | unknown (contracts.memory)
TAG_SPLIT_HASH = "sjp_split_hash"  # the held-out SJP cases a run is scored on
TAG_SNAPSHOTS = "checkpoint_snapshots"  # folder of the checkpoints kept for evaluation
METHOD_BASE = "base"  # the baseline run of an untouched base model

# Metric prefixes.
TRAIN_PREFIX = "train/"
LEXAM_PREFIX = "lexam/"
EVAL_PREFIX = "eval/"  # validation loss on held-out SJP cases during training
SJP_PREFIX = "sjp/"  # held-out SJP scoring after training (and at each checkpoint)

# Run artifacts.
SPLIT_ARTIFACT = "data/split.json"

# The registry: one registered model per base model and method.
REGISTRY_PREFIX = "lora-regret-"


RECOMMENDED_ALIAS = "recommended"  # the report's recommended recipe per base model


def registered_model_name(model: str, method: str) -> str:
    return f"{REGISTRY_PREFIX}{model}-{method}"


# The Airflow asset the sweep DAG updates and the report DAG is scheduled on; its event's
# extra holds the sweep id and the run counts (``contracts.outcomes.SweepCounts``).
SWEEP_RESULTS_ASSET = {"name": "lora_regret_sweep_results", "uri": "lora-regret://sweep-results"}
