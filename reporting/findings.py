"""The schema of findings.json: every number the report states, machine-readable.

Losses are mean final training losses over seeds (``std`` is their sample standard
deviation, ``None`` with a single seed). Percentages are in percent (0-100); LEXam
accuracies and format rates are fractions (0-1) as logged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigStat(_Model):
    """One configuration (model, method, rank, LR) aggregated over its seeds."""

    method: str
    rank: int | None
    lr: float
    final_loss: float
    std: float | None
    n_seeds: int
    run_ids: list[str]


class Optimum(ConfigStat):
    """The configuration with the lowest mean final loss, and what came second."""

    runner_up_loss: float | None = None
    within_noise_of_runner_up: bool | None = None


class RankBestLR(_Model):
    rank: int
    best_lr: float
    final_loss: float
    std: float | None
    n_seeds: int
    lr_ratio_to_full: float | None
    losses_by_lr: dict[str, float]
    consistent_with_common_lr: bool


class RankIndependence(_Model):
    """Does LoRA's best LR depend on the rank?"""

    common_lr: float | None
    ranks_at_common_lr: int
    ranks: int
    rank_independent: bool | None
    per_rank: list[RankBestLR]
    high_rank_min: int = 32
    high_rank_spread: float | None = None
    high_rank_spread_pct: float | None = None
    high_ranks: list[int] = []


class Gap(_Model):
    """LoRA's best final loss above full FT's, in % of LoRA's loss (the reference's
    convention: (0.717 - 0.620) / 0.717 = 13.5%); ``pct_of_full`` divides by full FT's."""

    lora_loss: float
    full_loss: float
    absolute: float
    pct: float
    pct_of_full: float
    within_noise: bool | None


class TrainableRow(_Model):
    rank: int
    trainable_fraction: float | None
    trainable_params: float | None
    expected_fraction: float | None
    under_1pct: bool | None
    matches_preset: bool | None


class TradeoffRow(_Model):
    """LEXam after fine-tuning with one method at one LR, over its ranks and seeds."""

    method: str
    lr: float
    n_runs: int
    final_loss: float | None
    accuracy: float | None
    accuracy_min: float | None
    accuracy_max: float | None
    format_rate: float | None
    loglik_accuracy: float | None


class Baseline(_Model):
    accuracy: float
    format_rate: float | None
    loglik_accuracy: float | None
    chance: float | None
    run_id: str


class ExcludedRun(_Model):
    run_id: str
    run_name: str
    method: str
    rank: int | None
    lr: float | None
    outcome: str
    reason: str


class UnfinishedRun(_Model):
    """A run of the sweep that did not finish: how it ended and why (MLflow tags written by
    the training job or, for jobs the cluster ended, the sweep DAG's record task)."""

    run_id: str
    run_name: str
    model: str
    method: str
    rank: int | None
    lr: float | None
    outcome: str
    job_state: str
    job_id: str
    reason: str


class SjpBaseline(_Model):
    """The untouched base model on the held-out SJP cases, and the majority-class rule."""

    macro_f1: float | None
    accuracy: float | None
    loss: float | None
    majority_macro_f1: float | None
    majority_accuracy: float | None
    n_cases: int | None
    split_hash: str
    run_id: str


class CurvePoint(_Model):
    """One configuration at one step: means over its seeds (std None with one seed)."""

    step: int
    final: bool
    lexam_accuracy: float | None
    lexam_accuracy_std: float | None
    accuracy_delta: float | None  # minus the base model's accuracy (fraction)
    sjp_macro_f1: float | None
    sjp_macro_f1_std: float | None
    eval_loss: float | None
    n_seeds: int


class Curve(_Model):
    """A configuration (method, rank, LR) over training: its checkpoints and final model."""

    method: str
    rank: int | None
    lr: float
    points: list[CurvePoint]


class RetentionDrop(_Model):
    """When LEXam accuracy first falls below the base model's by more than the noise."""

    method: str
    lr: float
    steps: list[int]
    first_step: int | None  # None: never within the evaluated steps
    runs_dropped: int
    runs: int
    accuracy: float | None  # mean at first_step (or at the last step when never)
    delta: float | None
    delta_low: float | None
    delta_high: float | None
    noise: str  # bootstrap | normal approximation


class LossOrder(_Model):
    """Does a lower training loss mean a better held-out macro-F1, across runs?"""

    n_runs: int
    spearman: float | None  # loss vs macro-F1: -1 = the orders agree perfectly
    pair_agreement: float | None  # share of run pairs ordered the same way by both
    agrees: bool | None
    lowest_loss_run: str | None
    lowest_loss: float | None
    lowest_loss_macro_f1: float | None
    best_macro_f1_run: str | None
    best_macro_f1: float | None
    best_macro_f1_loss: float | None


class TradeoffPoint(_Model):
    """A run's final model: held-out macro-F1 against LEXam retention."""

    run_id: str
    run_name: str
    method: str
    rank: int | None
    lr: float
    seed: int | None
    final_loss: float | None
    lexam_accuracy: float
    retention: float  # accuracy minus the base model's (fraction; 0 = kept all)
    sjp_macro_f1: float
    pareto: bool


class Candidate(_Model):
    """A recipe (method, rank, LR, step) over its seeds."""

    method: str
    rank: int | None
    lr: float
    step: int
    final: bool
    sjp_macro_f1: float
    sjp_macro_f1_std: float | None
    sjp_accuracy: float | None
    lexam_accuracy: float
    lexam_accuracy_std: float | None
    retention: float | None
    final_loss: float | None
    n_seeds: int
    run_ids: list[str]
    best_run_id: str  # the seed whose model the registry alias marks


class RegistryAlias(_Model):
    alias: str
    name: str
    version: str
    model_uri: str
    run_id: str
    step: int
    source: str  # final (the run's registered version) | checkpoint (registered by reference)


class Recommendation(_Model):
    """Best held-out macro-F1 among the recipes that keep LEXam within the margin."""

    margin: float  # accuracy points (fraction) below the base model still accepted
    metric: str = "accuracy"  # the LEXam accuracy retention is measured in
    rule: str
    base_accuracy: float | None
    n_candidates: int
    n_within_margin: int
    single_seed: bool
    best: Candidate | None
    runner_up: Candidate | None
    within_noise_of_runner_up: bool | None
    reason: str = ""
    registry: RegistryAlias | None = None
    registry_note: str = ""


class HeldoutFindings(_Model):
    """Beyond training loss: held-out SJP, forgetting over training, the recommendation.
    LEXam numbers here are in ``metric`` (``accuracy``: official; ``loglik_accuracy``)."""

    metric: str = "accuracy"
    base_level: float | None = None  # the base model's LEXam value in that metric
    sjp_baseline: SjpBaseline | None
    curves: list[Curve]
    retention: list[RetentionDrop]
    loss_order: LossOrder | None
    tradeoff: list[TradeoffPoint]
    recommendation: Recommendation | None


class ModelFindings(_Model):
    model: str
    total_params: float | None
    n_runs: int
    n_usable: int
    max_seeds: int
    lora_best: Optimum | None
    full_best: Optimum | None
    lr_ratio: float | None
    gap: Gap | None
    rank_independence: RankIndependence | None
    trainable: list[TrainableRow]
    tradeoff: list[TradeoffRow]
    baseline: Baseline | None
    lexam_at_best: dict[str, float | None]
    excluded: list[ExcludedRun]
    heldout: HeldoutFindings | None = None


class SizeEffect(_Model):
    models: list[str]
    total_params: list[float | None]
    gap_pct: list[float | None]
    lr_ratio: list[float | None]
    lora_best_loss: list[float | None]
    full_best_loss: list[float | None]
    gap_shrinks_with_size: bool | None


class Statement(_Model):
    """One finding in words, with the question it answers (1-5, ARCHITECTURE.md)."""

    id: str
    question: str
    model: str | None
    text: str


class ScalingPoint(_Model):
    """One layout (model, method, ZeRO stage, nodes x GPUs): means over its runs."""

    model: str
    method: str
    zero_stage: int | None
    nodes: int
    gpus_per_node: int | None
    world_size: int | None
    outcome: str  # finished | oom | failed | ... (the layout's worst outcome)
    n_runs: int
    samples_per_second: float | None
    tokens_per_second: float | None
    time_to_train_s: float | None
    time_to_first_step_s: float | None
    gpu_hours: float | None
    gpu_hours_source: str  # accounted (cluster) | logged (runtime x GPUs) | none
    peak_accelerator_mb: float | None
    final_loss: float | None
    lexam_accuracy: float | None
    speedup: float | None  # throughput / that of the group's smallest working layout
    efficiency: float | None  # speedup / (world size / that layout's world size)
    failure_reason: str = ""
    # The memory plan made before submitting: GB per GPU against the GPU's memory.
    predicted_gb: float | None = None
    gpu_memory_gb: float | None = None

    @property
    def predicted_oom(self) -> bool | None:
        if self.predicted_gb is None or self.gpu_memory_gb is None:
            return None
        return self.predicted_gb > self.gpu_memory_gb


class Scaling(_Model):
    """Throughput, time and cost against nodes per (model, method, ZeRO stage)."""

    definition: str
    points: list[ScalingPoint]
    oom: list[ScalingPoint]
    cheapest: dict[str, ScalingPoint]  # per model: fewest GPU-hours among working layouts


class Findings(_Model):
    sweep_id: str
    generated_at: str
    n_runs: int
    final_loss_definition: str
    noise_rule: str
    models: list[ModelFindings]
    size_effect: SizeEffect | None
    statements: list[Statement]
    scaling: Scaling | None = None
    not_finished: list[UnfinishedRun] = []
    heldout_definitions: dict[str, str] = {}
