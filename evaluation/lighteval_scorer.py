"""lighteval as the sweep's scorer: its runner generates and scores, the project adds the rest.

``LightevalBackend`` is a ``Backend`` whose answers come from lighteval's own runner
(``evaluation.lighteval_run``, in the lighteval environment) against the vLLM server,
the model picked by its served name; the project's evaluation loop then computes format
rate and parsed accuracy on exactly those generations, and the letter log-likelihoods
come from the project's endpoint client. ``metrics`` keeps lighteval's own corpus
metrics, which the job reports as ``lexam/accuracy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evaluation.backends.endpoint import EndpointBackend
from evaluation.data import LexamQuestion

LIGHTEVAL_PYTHON_ENV = "LORA_REGRET_LIGHTEVAL_PYTHON"
REPO_ROOT = Path(__file__).resolve().parent.parent


class LightevalError(RuntimeError):
    """lighteval's runner failed; the message holds its last output."""


def lighteval_python() -> str:
    """$LORA_REGRET_LIGHTEVAL_PYTHON, else .venv-lighteval, else this Python (images)."""
    named = os.environ.get(LIGHTEVAL_PYTHON_ENV)
    if named:
        return named
    local = REPO_ROOT / ".venv-lighteval" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def write_questions(questions: list[LexamQuestion], folder: Path) -> Path:
    """The selected questions as the ``test.jsonl`` lighteval's task reads."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "test.jsonl").open("w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps(question.model_dump(), ensure_ascii=False) + "\n")
    return folder


def run_lighteval(base_url: str, served_model: str, questions: list[LexamQuestion],
                  max_new_tokens: int, workdir: Path, max_model_len: int = 8192,
                  timeout_s: float = 24 * 3600) -> dict:
    """lighteval's result for one served model: ``{"metrics": ..., "samples": [...]}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = write_questions(questions, workdir / "data")
    output = workdir / "lighteval.json"
    command = [lighteval_python(), "-m", "evaluation.lighteval_run", "--base-url", base_url,
               "--served-model", served_model, "--data-dir", str(data_dir),
               "--choices", str(questions[0].n_choices), "--max-new-tokens",
               str(max_new_tokens), "--max-model-len", str(max_model_len),
               "--output", str(output)]
    print(f"[evaluation] lighteval on {served_model} ({len(questions)} questions)",
          file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=False)
    if done.returncode != 0 or not output.is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise LightevalError(f"lighteval on {served_model} exited with {done.returncode}:\n"
                             f"{tail}")
    return json.loads(output.read_text())


class LightevalBackend:
    """Answers from lighteval's runner; letter scores from the project's endpoint client."""

    def __init__(self, endpoint: EndpointBackend, base_url: str,
                 questions: list[LexamQuestion], workdir: Path,
                 max_model_len: int = 8192) -> None:
        self.endpoint = endpoint
        self.base_url = base_url
        self.questions = questions
        self.workdir = workdir
        self.max_model_len = max_model_len
        self.metrics: dict[str, float] = {}

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if len(prompts) != len(self.questions):
            raise ValueError("lighteval answers the evaluation set's questions, all of them")
        result = run_lighteval(self.base_url, self.endpoint.model, self.questions,
                               max_new_tokens, self.workdir / self.endpoint.model,
                               self.max_model_len)
        self.metrics = {key: float(value) for key, value in result["metrics"].items()
                        if not key.endswith("_stderr")}
        texts = {sample["id"]: sample["text"] for sample in result["samples"]}
        missing = [q.id for q in self.questions if q.id not in texts]
        if missing:
            raise LightevalError(f"lighteval returned no answer for {', '.join(missing[:5])}")
        return [texts[q.id] for q in self.questions]

    def choice_logprobs(self, prompts: list[str],
                        labels: list[tuple[str, ...]]) -> list[list[float]] | None:
        return self.endpoint.choice_logprobs(prompts, labels)
