"""Jobs on a cluster for Airflow: a SLURM-over-SSH backend, a local backend, one
deferrable operator and trigger over both. Knows nothing about what the jobs compute.

The job request, cluster profile and job states it works with are contracts
(``contracts.jobs``, ``contracts.profiles``, ``contracts.states``)."""
