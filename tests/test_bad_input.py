"""Hostile and careless input through every entry point: one line naming the field or the
file and line, exit code 2, no traceback, and nothing created (no MLflow run, no job or
output folder)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from contracts.conf import parse_conf, parse_nightly_conf, parse_report_conf
from contracts.errors import SpecError
from contracts.plan import plan_sweep
from contracts.profiles import load_profile

GOOD_CASE = {"id": "c1", "text": "Der Beschwerdeführer rügt ...", "label": 0, "language": "de"}
TRAIN = ["--model", "tiny-apertus", "--method", "lora", "--rank", "2", "--lr", "1e-3",
         "--max-steps", "1", "--batch", "2", "--grad-accum", "1", "--max-seq-length", "256"]


def _jsonl(rows: list) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


# (id, files to write into the data folder, extra CLI args, what the message must name)
DATA_CASES: list[tuple[str, dict[str, str | bytes], list[str], str]] = [
    ("malformed-line", {"c.jsonl": _jsonl([GOOD_CASE, "{not json", GOOD_CASE])}, [],
     "c.jsonl:2"),
    ("missing-text", {"c.jsonl": _jsonl([{"label": 1}])}, [], "c.jsonl:1: text"),
    ("missing-label", {"c.jsonl": _jsonl([{"text": "x"}])}, [], "c.jsonl:1: label"),
    ("label-2", {"c.jsonl": _jsonl([{**GOOD_CASE, "label": 2}])}, [], "label"),
    ("label-word", {"c.jsonl": _jsonl([{**GOOD_CASE, "label": "approval"}])}, [], "label"),
    ("label-null", {"c.jsonl": _jsonl([{**GOOD_CASE, "label": None}])}, [], "label"),
    ("label-half", {"c.jsonl": _jsonl([{**GOOD_CASE, "label": 0.5}])}, [], "label"),
    ("label-bool", {"c.jsonl": _jsonl([{**GOOD_CASE, "label": True}])}, [], "label"),
    ("empty-text", {"c.jsonl": _jsonl([{**GOOD_CASE, "text": ""}])}, [], "text"),
    ("list-row", {"c.jsonl": _jsonl([[1, 2]])}, [], "JSON object"),
    ("counts-bad-rows", {"c.jsonl": _jsonl([GOOD_CASE] + [{"text": "x", "label": 7}] * 9)},
     [], "9 of 10 rows"),
    ("empty-file", {"c.jsonl": ""}, [], "holds no cases"),
    ("not-utf8", {"c.jsonl": b"\xff\xfe\x00bad"}, [], "UTF-8"),
    ("wrong-suffix", {"c.csv": "text,label\n"}, [], "no .jsonl"),
    ("no-language-left", {"c.jsonl": _jsonl([GOOD_CASE])}, ["--languages", "it"],
     "data.languages"),
    ("seq-too-short", {"c.jsonl": _jsonl([GOOD_CASE])}, ["--max-seq-length", "40"],
     "max_seq_length"),
]

SPEC_FILES: list[tuple[str, str | bytes, str]] = [
    ("malformed-yaml", "model: [tiny\n  method: : :\n", "not valid YAML"),
    ("a-list", "- 1\n- 2\n", "mapping"),
    ("a-scalar", "42\n", "mapping"),
    ("empty", "", "mapping"),
    ("binary", b"\x7fELF\x00\x01\x02", "text"),
    ("bool-rank", "model: tiny-apertus\nmethod: lora\nlr: 0.001\nrank: true\n", "rank"),
    ("string-lr", "model: tiny-apertus\nmethod: full\nlr: '1e-3'\n", "lr"),
    ("inf-alpha", "model: tiny-apertus\nmethod: lora\nrank: 2\nlr: 0.001\nalpha: .inf\n",
     "alpha"),
    ("unknown-field", "model: tiny-apertus\nmethod: full\nlr: 0.001\nlearning_rate: 1\n",
     "learning_rate"),
]

FLAG_CASES: list[tuple[str, list[str], str]] = [
    ("alpha-inf", ["--alpha", "inf"], "alpha"),
    ("alpha-nan", ["--alpha", "nan"], "alpha"),
    ("lr-zero", ["--lr", "0"], "lr"),
    ("lr-negative", ["--lr", "-1"], "lr"),
    ("lr-huge", ["--lr", "5"], "lr"),
    ("rank-3", ["--rank", "3"], "rank"),
    ("rank-0", ["--rank", "0"], "rank"),
    ("unknown-model", ["--model", "gpt-5"], "model"),
    ("negative-seed", ["--seed", "-1"], "seed"),
    ("zero-steps", ["--max-steps", "0"], "max_steps"),
    ("zero-batch", ["--batch", "0"], "per_device_batch"),
    ("shell-data", ["--data", "x; rm -rf /"], "data.source"),
    ("missing-data", ["--data", "/nonexistent/cases.jsonl"], "does not exist"),
    ("hub-offline", ["--data", "hub:nobody/no-such-dataset"], "data.source"),
    ("bad-language", ["--languages", "de,xx"], "languages"),
    ("zero-samples", ["--max-samples", "0"], "max_samples"),
    ("missing-spec", ["--spec", "/nonexistent/spec.yaml"], "cannot read"),
    ("output-under-a-file", ["--output-dir", "/etc/hostname/runs"], "output_dir"),
    ("bad-model-path", ["--model-path", "/nonexistent/model"], "model"),
]


def run_cli(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of an in-process CLI call (argparse errors included)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, err.getvalue()


@pytest.fixture
def nothing_created(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """Checks, after the test, that no MLflow run and no run folder were created."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiments = client.search_experiments()
    assert not client.search_runs([e.experiment_id for e in experiments]) if experiments else True
    assert not (tmp_path / "out").exists()


def _assert_clean(code: int, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert needle in stderr, stderr


@pytest.mark.parametrize(("case", "files", "extra", "needle"), DATA_CASES,
                         ids=[c[0] for c in DATA_CASES])
def test_training_refuses_bad_data(case, files, extra, needle, nothing_created: Path) -> None:
    from training.__main__ import main

    data = nothing_created / "data"
    data.mkdir()
    for name, content in files.items():
        target = data / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    source = data / next(iter(files)) if case not in ("wrong-suffix",) else data
    code, stderr = run_cli(main, [*TRAIN, "--output-dir", str(nothing_created / "out"),
                                  "--data", str(source), *extra])
    _assert_clean(code, stderr, needle)


@pytest.mark.parametrize(("case", "content", "needle"), SPEC_FILES,
                         ids=[c[0] for c in SPEC_FILES])
def test_training_refuses_bad_spec_files(case, content, needle, nothing_created: Path) -> None:
    from training.__main__ import main

    spec = nothing_created / "spec.yaml"
    spec.write_bytes(content) if isinstance(content, bytes) else spec.write_text(content)
    code, stderr = run_cli(main, ["--spec", str(spec), "--output-dir",
                                  str(nothing_created / "out")])
    _assert_clean(code, stderr, needle)


@pytest.mark.parametrize(("case", "flags", "needle"), FLAG_CASES,
                         ids=[c[0] for c in FLAG_CASES])
def test_training_refuses_bad_flags(case, flags, needle, nothing_created: Path) -> None:
    from training.__main__ import main

    code, stderr = run_cli(main, [*TRAIN, "--output-dir", str(nothing_created / "out"),
                                  "--data", "synthetic", *flags])
    _assert_clean(code, stderr, needle)
    assert not Path("/etc/hostname/runs").exists()


def test_yaml_booleans_mean_what_they_say(tmp_path: Path) -> None:
    from contracts.spec import RunSpec

    spec = tmp_path / "spec.yaml"
    spec.write_text("model: tiny-apertus\nmethod: full\nlr: 0.001\nbf16: off\n")
    assert RunSpec.from_file(spec).bf16 == "off"


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The real process, as a user starts it: a bad data file, exit 2, one clear line."""
    bad = tmp_path / "cases.jsonl"
    bad.write_text(_jsonl([GOOD_CASE, {"text": "x", "label": "approval"}]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run([sys.executable, "-m", "training", *TRAIN, "--data", str(bad),
                           "--output-dir", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{bad}:2: label" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# -- trigger confs ------------------------------------------------------------------------

CONF_CASES: list[tuple[str, dict, str]] = [
    ("string-bool", {"force": "yes"}, "force"),
    ("bool-lr", {"learning_rates": [True]}, "learning_rates.0"),
    ("string-lr", {"learning_rates": ["1e-4"]}, "learning_rates.0"),
    ("bool-steps", {"max_steps": True}, "max_steps"),
    ("nan-epochs", {"epochs": float("nan")}, "epochs"),
    ("not-a-mapping", ["sweep"], "mapping"),
]
PLAN_CASES: list[tuple[str, dict, str]] = [
    ("climbing-data", {"data_source": "../../etc/passwd"}, "data_source"),
    ("absolute-data", {"data_source": "/etc/passwd"}, "data_source"),
    ("private-key", {"data_source": "/root/.ssh/id_rsa"}, "data_source"),
    ("hidden-folder", {"eval_data": ".ssh/id_rsa"}, "eval_data"),
    ("climbing-eval", {"eval_data": "../../../root/.ssh/id_ed25519"}, "eval_data"),
    ("huge-layout", {"nodes": [4096], "gpus_per_node": [64]}, "nodes"),
]


@pytest.mark.parametrize(("case", "conf", "needle"), CONF_CASES,
                         ids=[c[0] for c in CONF_CASES])
def test_sweep_conf_is_strict(case, conf, needle) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_conf(conf if not isinstance(conf, dict) else {"sweep": "tiny", **conf})


@pytest.mark.parametrize(("case", "conf", "needle"), PLAN_CASES,
                         ids=[c[0] for c in PLAN_CASES])
def test_plan_confines_paths_and_layouts(case, conf, needle) -> None:
    with pytest.raises(SpecError, match=needle):
        plan_sweep(parse_conf({"sweep": "tiny", **conf}), load_profile("local"),
                   finished=lambda specs: set())


def test_data_under_the_profiles_roots_is_accepted(shared_data: Path) -> None:
    cases = str((shared_data / "sjp_sample" / "cases.jsonl").resolve())
    plan = plan_sweep(parse_conf({"sweep": "tiny", "data_source": cases}),
                      load_profile("local"), finished=lambda specs: set())
    assert {t.spec.data.source for t in plan.train} == {cases}


def test_the_sweep_id_does_not_depend_on_value_order() -> None:
    first = parse_conf({"sweep": "tiny", "learning_rates": [1e-3, 1e-4], "ranks": [4, 2]})
    second = parse_conf({"sweep": "tiny", "learning_rates": [1e-4, 1e-3, 1e-4],
                         "ranks": [2, 4]})
    assert first.derived_sweep_id() == second.derived_sweep_id()


@pytest.mark.parametrize(("parse", "conf", "needle"), [
    (parse_nightly_conf, {"data": "../../etc/passwd; id"}, "data"),
    (parse_nightly_conf, {"max_new_tokens": 1e9}, "max_new_tokens"),
    (parse_nightly_conf, {"force": 1}, "force"),
    (parse_report_conf, {"sweep_id": "$(reboot)"}, "sweep_id"),
    (parse_report_conf, {"sweep_id": "x", "extra": 1}, "extra"),
])
def test_nightly_and_report_confs_are_strict(parse, conf, needle) -> None:
    with pytest.raises(SpecError, match=needle):
        parse(conf)


# -- evaluation ---------------------------------------------------------------------------

QUESTION = {"id": "q1", "question": "Which court?", "choices": ["a", "b", "c", "d"],
            "gold": 1, "language": "en"}
EVAL = ["--model", "tiny-apertus", "--max-questions", "2", "--max-new-tokens", "2",
        "--dtype", "float32"]
EVAL_DATA_CASES: list[tuple[str, str | bytes, str]] = [
    ("list-line", _jsonl([QUESTION, [1, 2]]), "q.jsonl:2 must be a JSON object"),
    ("not-utf8", b"\xff\xfe{}", "UTF-8"),
    ("gold-infinity", '{"id": "q", "question": "x", "choices": ["a","b","c","d"], '
                      '"gold": Infinity}\n', "Infinity"),
    ("gold-fraction", _jsonl([{**QUESTION, "gold": 1.9}]), "whole index"),
    ("gold-outside", _jsonl([{**QUESTION, "gold": 7}]), "outside"),
    ("nested-choices", _jsonl([{**QUESTION, "choices": [["a"], ["b"], ["c"], ["d"]]}]),
     "list of strings"),
    ("no-question", _jsonl([{k: v for k, v in QUESTION.items() if k != "question"}]),
     "question"),
    ("broken-json", '{"id": "q", \n', "q.jsonl:1 is not JSON"),
]
EVAL_FLAG_CASES: list[tuple[str, list[str], str]] = [
    ("malformed-uri", ["--adapter", "models:/only-a-name"], "models:/NAME/VERSION"),
    ("unknown-version", ["--adapter", "models:/lora-regret-tiny-apertus-lora/99"], "adapter"),
    ("unknown-run", ["--run-id", "0123456789abcdef0123456789abcdef"], "run-id"),
    ("quote-in-sweep-id", ["--sweep-id", "a'b"], "sweep-id"),
    ("zero-questions", ["--max-questions", "0"], "max_questions"),
    ("bool-like-budget", ["--max-new-tokens", "1e9"], "max_new_tokens"),
    ("five-choices", ["--choices", "5"], "choices"),
    ("shell-data", ["--data", "x; rm -rf /"], "data"),
    ("missing-data", ["--data", "/nonexistent/lexam.jsonl"], "does not exist"),
    ("bad-language", ["--languages", "de,$(id)"], "languages"),
    ("missing-local-adapter", ["--adapter", "/nonexistent/adapter"], "adapter"),
]


@pytest.mark.parametrize(("case", "content", "needle"), EVAL_DATA_CASES,
                         ids=[c[0] for c in EVAL_DATA_CASES])
def test_evaluation_refuses_bad_data(case, content, needle, nothing_created: Path) -> None:
    from evaluation.cli import main

    data = nothing_created / "q.jsonl"
    data.write_bytes(content) if isinstance(content, bytes) else data.write_text(content)
    out = nothing_created / "out" / "r.json"
    code, stderr = run_cli(main, [*EVAL, "--data", str(data), "--output-json", str(out)])
    _assert_clean(code, stderr, needle)


@pytest.mark.parametrize(("case", "flags", "needle"), EVAL_FLAG_CASES,
                         ids=[c[0] for c in EVAL_FLAG_CASES])
def test_evaluation_refuses_bad_flags(case, flags, needle, nothing_created: Path) -> None:
    from evaluation.cli import main

    out = nothing_created / "out" / "r.json"
    code, stderr = run_cli(main, [*EVAL, "--data", "synthetic", "--output-json", str(out),
                                  *flags])
    _assert_clean(code, stderr, needle)


@pytest.mark.parametrize(("content", "needle"), [
    ("- 1\n", "mapping"),
    ("model: tiny-apertus\noptions: {choices: 5}\nsweep_id: s\n", "options.choices"),
    ("model: tiny-apertus\nrun_ids: ['x; id']\nbaseline: false\n", "run_ids.0"),
    ("model: tiny-apertus\n", "sweep_id"),
])
def test_evaluation_refuses_bad_spec_files(content, needle, nothing_created: Path) -> None:
    from evaluation.cli import main

    spec = nothing_created / "eval.yaml"
    spec.write_text(content)
    code, stderr = run_cli(main, ["--spec", str(spec), "--output-dir",
                                  str(nothing_created / "out")])
    _assert_clean(code, stderr, needle)
    code, stderr = run_cli(main, ["--spec", str(nothing_created / "missing.yaml")])
    _assert_clean(code, stderr, "cannot read")


def test_an_mlflow_failure_keeps_the_results_and_says_how_to_log_them(
        tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from evaluation.cli import main

    out = tmp_path / "results.json"
    down = "http://user:secret@127.0.0.1:9"  # a tracking server that is down
    with monkeypatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", down)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        mlflow.set_tracking_uri(down)
        try:
            code, stderr = run_cli(main, [*EVAL, "--data", "synthetic", "--output-json",
                                          str(out)])
        finally:
            mlflow.set_tracking_uri(mlflow_uri)
    assert code == 1 and out.is_file(), stderr
    assert "python -m evaluation log" in stderr and "secret" not in stderr
    payload = json.loads(out.read_text())
    assert len(payload["details"]) == 2

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("later")).info.run_id
    code, stderr = run_cli(main, ["log", str(out), "--run-id", run_id])
    assert code == 0, stderr
    logged = client.get_run(run_id).data
    assert logged.metrics["lexam/n_questions"] == 2
    assert logged.tags["lexam_eval_hash"] == payload["eval_hash"]


def test_an_unexpected_failure_prints_a_redacted_traceback(tmp_path: Path) -> None:
    """A tracking server URL with a password in it never reaches the job log."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://alice:hunter2@127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    done = subprocess.run([sys.executable, "-m", "training", *TRAIN, "--data", "synthetic",
                           "--output-dir", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "***@127.0.0.1" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
