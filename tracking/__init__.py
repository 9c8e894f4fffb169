"""MLflow, the way every part of lora-regret uses it: the store, runs found by spec hash,
cluster outcomes recorded into runs. It imports mlflow (never torch), so the training and
evaluation jobs, the reporting code and the Airflow tasks share one implementation; the
names it reads and writes are the contracts' (``contracts.names``)."""
