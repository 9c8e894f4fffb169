"""Sweeps as one batch of jobs, without a cluster: the grid-size limit, keys and
dependencies of a plan, run outcomes, and batch submission on the local backend (real
detached processes): re-attaching, running failed jobs again, evaluation per model after
its own training jobs, and the per-sweep bound on jobs at once."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from cluster_jobs.batch import CHUNK, SubmittedJob, push_submission, submit_jobs, submitted_job
from cluster_jobs.local import LocalJobs

from contracts.conf import parse_conf, plan_runs
from contracts.errors import SpecError
from contracts.jobs import JobRequest, task_key
from contracts.outcomes import summarize
from contracts.plan import MAX_RUNS, check_size, plan_sweep
from contracts.profiles import ClusterProfile
from contracts.submission import evaluations_to_rerun, sweep_jobs

# A job that appends "start"/"end" with its name and a timestamp to a shared file.
STAMP = ("import json, sys, time; name, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]\n"
         "def stamp(what):\n"
         "    with open(out, 'a') as f: f.write(json.dumps([name, what, time.time()]) + '\\n')\n"
         "stamp('start'); time.sleep(secs); stamp('end')\n")


@pytest.fixture
def local_profile(tmp_path: Path) -> ClusterProfile:
    return ClusterProfile(name="local-test", backend="local", work_dir=str(tmp_path / "jobs"),
                          poll_interval=0.2, resources={"time_limit": "10"})


def sleeper(name: str, seconds: float, stamps: Path, after: tuple[str, ...] = ()) -> JobRequest:
    return JobRequest(name=name, key=name, after=after,
                      argv=(sys.executable, "-c", STAMP, name, str(seconds), str(stamps)))


def wait_all(jobs: LocalJobs, keys: list[str], timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {k: jobs.status(k).state for k in keys}
        if all(s.finished for s in states.values()):
            return {k: s.value for k, s in states.items()}
        assert time.monotonic() < deadline, f"jobs did not end: {states}"
        time.sleep(0.2)


def stamps_of(path: Path) -> dict[tuple[str, str], float]:
    return {(name, what): t for name, what, t in map(json.loads, path.read_text().splitlines())}


# -- the plan as a batch ---------------------------------------------------------------------

def test_grid_size_is_counted_and_limited_before_anything_is_expanded() -> None:
    for conf in ({}, {"sweep": "tiny"}, {"sweep": "scaling-reference"}, {"sweep": "demo-cpu"},
                 {"sweep": "tiny", "seeds": [0, 1, 2], "models": ["tiny-apertus",
                                                                   "smollm2-135m"]}):
        parsed = parse_conf(conf)
        assert check_size(parsed) == len(plan_runs(parsed)), conf
    huge = parse_conf({"sweep": "tiny", "learning_rates": [i * 1e-6 for i in range(1, 1001)],
                       "seeds": list(range(1000))})
    started = time.monotonic()
    with pytest.raises(SpecError, match=rf"grid: 2000000 runs .* \({MAX_RUNS}\)"):
        plan_sweep(huge, ClusterProfile(name="x", backend="local"), lambda specs: set())
    assert time.monotonic() - started < 2  # the million-run grid is never expanded
    at_limit = parse_conf({"sweep": "tiny", "seeds": list(range(MAX_RUNS // 4))})
    assert check_size(at_limit) == MAX_RUNS


def test_plan_becomes_keyed_jobs_with_lanes_and_evaluation_after_its_model() -> None:
    conf = parse_conf({"sweep": "tiny", "models": ["tiny-apertus", "smollm2-135m"]})
    plan = plan_sweep(conf, ClusterProfile(name="x", backend="local"), lambda specs: set())
    train, evaluate = sweep_jobs(plan, "dag", "run", max_at_once=3)
    assert len(train) == 8 and len(evaluate) == 2
    assert [j.key for j in train] == [task_key(t.job.name, "dag", "run", "train", i)
                                      for i, t in enumerate(plan.train)]
    assert [j.after for j in train[:3]] == [(), (), ()]
    assert all(j.after == (train[i].key,) for i, j in enumerate(train[3:]))
    for job, item in zip(evaluate, plan.evaluate, strict=True):
        mine = {t.key for t, run in zip(train, plan.train, strict=True)
                if run.spec.model == item.spec.model}
        assert set(job.after) == mine and len(mine) == 4
    assert sweep_jobs(plan, "dag", "run")[0][5].after == ()  # no bound: no lanes
    retrained = {train[0].key}
    assert evaluations_to_rerun(evaluate, retrained) == {
        e.key for e in evaluate if train[0].key in e.after}


def test_run_outcomes_are_counted_and_the_unfinished_explained() -> None:
    summary = summarize([
        ("ok", {"state": "COMPLETED", "exit_code": 0, "job_id": "1"}),
        ("nan", {"state": "FAILED", "exit_code": 3}),
        ("oom", {"state": "OUT_OF_MEMORY", "exit_code": 4, "log_tail": "CUDA out of memory"}),
        ("crash", {"state": "FAILED", "exit_code": 1, "reason": "NonZeroExitCode",
                   "log_tail": "ValueError: bad\n[cluster_jobs] exit code 1 at now"}),
        ("lost", None),
    ])
    assert summary.counts.model_dump() == {"finished": 1, "diverged": 1, "oom": 1, "failed": 2}
    reasons = {r.name: r.reason for r in summary.not_finished}
    assert reasons["crash"] == "job FAILED, exit code 1: ValueError: bad (NonZeroExitCode)"
    assert "never sensed" in reasons["lost"] and "CUDA" in reasons["oom"]
    assert [r.name for r in summary.failed] == ["crash", "lost"]


def test_sensing_tasks_find_their_job_in_small_chunks() -> None:
    pushed: dict[str, object] = {}
    profile = ClusterProfile(name="x", backend="local")
    jobs = [SubmittedJob(name=f"n{i}", key=f"k{i}", job_id=str(i)) for i in range(CHUNK + 6)]
    output = push_submission(lambda key, value: pushed.__setitem__(key, value), profile,
                             {"train": jobs, "evaluate": []})
    assert output["groups"]["train"][CHUNK + 5]["key"] == f"k{CHUNK + 5}"
    assert sorted(pushed) == ["jobs-train-0", "jobs-train-1"]  # one pull per sensing task
    found_profile, job = submitted_job(pushed["jobs-train-1"], "train", CHUNK + 5)
    assert found_profile == profile and job.key == f"k{CHUNK + 5}"
    with pytest.raises(LookupError):
        submitted_job(pushed["jobs-train-1"], "train", CHUNK + 6)


# -- batches on the local backend ------------------------------------------------------------

def test_batch_reattaches_runs_failed_jobs_again_and_reruns_on_request(
        local_profile: ClusterProfile, tmp_path: Path) -> None:
    script = "echo run >> ../runs-$0.txt; [ $0 != flaky ] || [ -f ../flaky-ok ] || exit 3"
    requests = [JobRequest(name=n, key=n, argv=("bash", "-c", script, n))
                for n in ("steady", "flaky", "again")]
    jobs = LocalJobs(local_profile)
    with jobs:
        first = submit_jobs(jobs, requests, os.environ)
    assert [j.result for j in first] == ["submitted"] * 3
    assert wait_all(jobs, ["steady", "flaky", "again"]) == {
        "steady": "COMPLETED", "flaky": "FAILED", "again": "COMPLETED"}
    (tmp_path / "jobs" / "flaky-ok").touch()
    second = submit_jobs(jobs, requests, os.environ, rerun={"again"})
    assert [(j.result, j.finished) for j in second] == [
        ("existing", True), ("submitted", False), ("submitted", False)]
    wait_all(jobs, ["steady", "flaky", "again"])
    runs = {n: (tmp_path / "jobs" / f"runs-{n}.txt").read_text().count("run")
            for n in ("steady", "flaky", "again")}
    assert runs == {"steady": 1, "flaky": 2, "again": 2}  # nothing submitted twice by mistake
    assert jobs.status("flaky").state.value == "COMPLETED"
    assert len(list((tmp_path / "jobs").glob("*.ended-*"))) == 2  # the old folders, kept


def test_each_models_evaluation_starts_when_its_own_training_ended(
        local_profile: ClusterProfile, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps.jsonl"
    train = [sleeper("a1", 0.5, stamps), sleeper("a2", 1, stamps),
             sleeper("b1", 6, stamps), sleeper("b2", 6, stamps)]
    evaluate = [sleeper("eval-a", 0, stamps, after=("a1", "a2")),
                sleeper("eval-b", 0, stamps, after=("b1", "b2"))]
    jobs = LocalJobs(local_profile)
    trained = submit_jobs(jobs, train, os.environ)
    submit_jobs(jobs, evaluate, os.environ, queued={j.key for j in trained if j.queued})
    deadline = time.monotonic() + 20
    while jobs.status("eval-b").reason == "starting":  # the runner is starting up
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert jobs.status("eval-b").reason.startswith("waiting for 2 job(s) it depends on")
    wait_all(jobs, ["a1", "a2", "b1", "b2", "eval-a", "eval-b"])
    t = stamps_of(stamps)
    assert t["eval-a", "start"] >= max(t["a1", "end"], t["a2", "end"])
    assert t["eval-a", "start"] < min(t["b1", "end"], t["b2", "end"])  # not the whole grid
    assert t["eval-b", "start"] >= max(t["b1", "end"], t["b2", "end"])


def test_max_jobs_per_sweep_bounds_the_jobs_running_at_once(
        local_profile: ClusterProfile, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps.jsonl"
    plan_like = [sleeper(f"r{i}", 1.5, stamps) for i in range(5)]
    bound = 2
    lanes = [r.model_copy(update={"after": (plan_like[i - bound].key,) if i >= bound else ()})
             for i, r in enumerate(plan_like)]
    jobs = LocalJobs(local_profile)
    submit_jobs(jobs, lanes, os.environ)
    wait_all(jobs, [r.key for r in lanes])
    t = stamps_of(stamps)
    events = sorted((t[r.key, what], +1 if what == "start" else -1)
                    for r in lanes for what in ("start", "end"))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == bound
