"""The lighteval custom-task file: imports under lighteval, exposes the four LEXam tasks,
builds the official prompt and scores with the official extraction.

lighteval lives in its own environment (``.venv-lighteval``, see scripts/bootstrap-env.sh:
it pins termcolor==2.3.0, which Airflow refuses), so the check runs there in a subprocess
and is skipped where that environment is absent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIGHTEVAL_PYTHON = REPO / ".venv-lighteval" / "bin" / "python"

CHECK = r"""
import json, sys
import evaluation.lighteval_tasks as tasks
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from evaluation.prompt import build_prompt

line = json.loads(sys.argv[1])
doc = tasks.lexam_prompt(line, "lexam_mcq_4")
scores = [tasks.lexam_metric.compute_sample(doc=doc, model_response=ModelResponse(text=[t]))
          for t in ("Reasoning ###A### then ###C###", "no marker", "###B###")]
print(json.dumps({
    "names": [t.name for t in tasks.TASKS_TABLE],
    "configs": all(isinstance(t, LightevalTaskConfig) for t in tasks.TASKS_TABLE),
    "subsets": [t.hf_subset for t in tasks.TASKS_TABLE],
    "generation_size": tasks.TASKS_TABLE[0].generation_size,
    "same_prompt": doc.query == build_prompt(line["Question"], eval(line["Choices"]),
                                             line["Course"]),
    "choices": doc.choices, "gold": doc.gold_index, "scores": scores,
}))
"""


def test_custom_task_file_under_lighteval() -> None:
    if not LIGHTEVAL_PYTHON.is_file():
        pytest.skip(".venv-lighteval is not set up (scripts/bootstrap-env.sh)")
    line = {"Question": "Wer wählt den Bundesrat?", "Choices": "['Volk', 'Parlament', "
            "'Kantone', 'Gericht']", "Gold": 2, "Course": "Staatsrecht"}  # old schema
    done = subprocess.run([str(LIGHTEVAL_PYTHON), "-c", CHECK, json.dumps(line)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["names"] == ["lexam_mcq_4", "lexam_mcq_8", "lexam_mcq_16", "lexam_mcq_32"]
    assert result["configs"] and result["same_prompt"]
    assert result["subsets"] == ["mcq_4_choices", "mcq_8_choices", "mcq_16_choices",
                                 "mcq_32_choices"]
    assert result["generation_size"] == 4096
    assert result["choices"] == ["A", "B", "C", "D"] and result["gold"] == 2
    assert result["scores"] == [{"accuracy": 1.0, "format_rate": 1.0},
                                {"accuracy": 0.0, "format_rate": 0.0},
                                {"accuracy": 0.0, "format_rate": 1.0}]
