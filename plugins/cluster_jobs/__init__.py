"""Jobs on a cluster for Airflow: a SLURM-over-SSH backend, a local backend, batch
submission, deferrable operators and one trigger over both, and one state poller per
cluster in the triggerer. Knows nothing about what the jobs compute.

The job request, cluster profile and job states it works with are contracts
(``contracts.jobs``, ``contracts.profiles``, ``contracts.states``)."""
