"""What an evaluation job evaluates, and how: the options and the job's spec file.

Every evaluation job (the sweep's, per base model; the nightly re-evaluation) starts from
an ``EvalJobSpec`` written into its job folder, so the DAGs never assemble an argument list
by hand and the job validates its whole input before it loads anything.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from contracts.errors import parse
from contracts.files import SpecFile
from contracts.names import DEFAULT_EXPERIMENT
from contracts.presets import known_model
from contracts.safe import LanguageCode, SafeName, SafePath

LEXAM_HUB_REPO = "LEXam-Benchmark/LEXam"
RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,64}$")]
Dtype = Literal["auto", "bfloat16", "float32", "float16"]
Backend = Literal["transformers", "vllm"]
Scorer = Literal["project", "lighteval"]


class EvalOptions(BaseModel):
    """What to evaluate on and how; validated because it can come from a trigger form."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: SafePath = Field(default=f"hub:{LEXAM_HUB_REPO}", title="LEXam data",
                           description="Local LEXam JSONL or folder, 'synthetic', or hub:REPO.")
    choices: Literal[4, 8, 16, 32] = Field(default=4, title="Choices",
                                           description="LEXam variant: answer choices.")
    max_questions: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] | None = Field(
        default=None, title="Max questions", description="A seeded sample; empty: all.")
    seed: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)] = Field(
        default=0, title="Sample seed")
    languages: tuple[LanguageCode, ...] | None = Field(
        default=None, title="Languages", description="e.g. de, en; empty: all.")
    max_new_tokens: Annotated[int, Field(strict=True, gt=0, le=65536)] = Field(
        default=4096, title="Generation budget",
        description="Tokens generated per answer (official: 4096).")
    generate: StrictBool = Field(default=True, title="Generate answers",
                                 description="Official accuracy and format rate.")
    loglik: StrictBool = Field(default=True, title="Score the choice letters",
                               description="Log-likelihood accuracy (no generation).")
    batch_size: Annotated[int, Field(strict=True, gt=0, le=1024)] = Field(
        default=8, title="Batch size", description="Questions per forward pass (transformers).")
    synthetic_size: Annotated[int, Field(strict=True, gt=0, le=100_000)] = Field(
        default=64, title="Synthetic questions", description="With data 'synthetic'.")

    @field_validator("languages")
    @classmethod
    def _no_empty_filter(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return value or None


class EvalJobSpec(SpecFile):
    """One evaluation job: one base model, its untouched baseline and/or the runs to evaluate.

    ``run_ids`` None means every finished run of ``sweep_id`` and ``model``; with
    ``skip_evaluated`` a run whose ``lexam_eval_hash`` tag already names this evaluation
    set is left alone (a re-triggered sweep or tonight's re-evaluation does no work twice).
    Each model is also scored on held-out SJP cases (``sjp``), and with ``checkpoints`` the
    runs' kept checkpoints are evaluated too (forgetting curves).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    WHAT: ClassVar[str] = "evaluation spec"

    model: str
    sweep_id: SafeName | None = None
    experiment: SafeName = DEFAULT_EXPERIMENT
    run_ids: tuple[RunId, ...] | None = None
    baseline: StrictBool = Field(default=True,
                                 description="Also evaluate the untouched base model.")
    options: EvalOptions = EvalOptions()
    backend: Backend = "transformers"
    scorer: Scorer = Field(
        default="project",
        description="Who generates and scores the official accuracy: the project's own "
                    "runner, or lighteval's runner (LEXam custom task) against the vLLM "
                    "server; the project's scorer always adds format rate and "
                    "log-likelihood accuracy.")
    dtype: Dtype = "auto"
    skip_evaluated: StrictBool = False
    checkpoints: StrictBool = Field(
        default=False, description="Also evaluate the checkpoints the runs kept "
        "(RunSpec.checkpoint_eval_every), each logged at its step.")
    sjp: StrictBool = Field(
        default=True, description="Score held-out SJP cases (runs that recorded a split, "
        "and the base model on the same cases).")
    sjp_max_cases: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] | None = Field(
        default=None, description="At most N held-out cases per model (default: all).")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return known_model(value)

    @model_validator(mode="after")
    def _targets_named(self) -> EvalJobSpec:
        if self.run_ids is None and self.sweep_id is None:
            raise ValueError("sweep_id: required unless run_ids name the runs to evaluate")
        if self.baseline and self.sweep_id is None:
            raise ValueError("sweep_id: the baseline run belongs to a sweep; name one")
        if self.scorer == "lighteval" and self.backend != "vllm":
            raise ValueError("scorer: lighteval evaluates through the vLLM server; "
                             "set backend to vllm")
        return self


def parse_eval_spec(raw: Any) -> EvalJobSpec:
    return parse(EvalJobSpec, raw, "evaluation spec")
