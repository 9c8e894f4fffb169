"""Run inside the Airflow-only environment (.venv-airflow) by tests/test_airflow_env.py.

Checks that the ML stack is absent, that the DagBag imports with no errors, and that
``dag.test()`` of a tiny sweep on the local backend runs to the end, its jobs running in
the training environment named by the cluster profile. Prints one JSON line of findings.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


def main() -> int:
    missing = [m for m in ("torch", "transformers", "peft", "trl")
               if importlib.util.find_spec(m) is None]
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    import contracts.paths

    bag = DagBag()
    dag = bag.get_dag("lora_regret_sweep")
    conf = json.loads(sys.argv[1])
    run = dag.test(run_conf=conf)
    states = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("lora-regret")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    print(json.dumps({
        "missing": missing,
        "import_errors": {str(k): str(v)[-500:] for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
        "configs_dir": str(contracts.paths.configs_dir()),
        "contracts_file": contracts.paths.__file__,
        "state": str(run.state),
        "states": states,
        "runs": [{"outcome": r.data.tags.get("outcome"), "method": r.data.tags.get("method"),
                  "lexam_n": r.data.metrics.get("lexam/n_questions")} for r in runs],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
