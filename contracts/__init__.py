"""The contracts every part of lora-regret shares, and nothing else.

Run spec and its hash, sweep grids and the trigger conf, evaluation specs, model presets,
cluster profiles and job requests, a sweep plan and its jobs as one batch, job states and
outcomes, exit codes, MLflow names, the
sweep-results asset, safe-string types and one error format. It depends on pydantic and
PyYAML only (no torch, transformers, mlflow or Airflow), so the Airflow side can import it
where only Airflow is installed. docs/CONVENTIONS.md describes the contracts in prose.
"""
