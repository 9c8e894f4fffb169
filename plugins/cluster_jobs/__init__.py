"""Jobs on a cluster for Airflow: a SLURM-over-SSH backend, a local backend, one
deferrable operator and trigger over both. Knows nothing about what the jobs compute."""

from cluster_jobs.jobs import JOB_DIR_PLACEHOLDER, JOB_ID_PLACEHOLDER, JobRequest
from cluster_jobs.profiles import ClusterProfile, ProfileError, Resources, load_profile
from cluster_jobs.states import JobState, JobStatus

__all__ = [
    "JOB_DIR_PLACEHOLDER",
    "JOB_ID_PLACEHOLDER",
    "ClusterProfile",
    "JobRequest",
    "JobState",
    "JobStatus",
    "ProfileError",
    "Resources",
    "load_profile",
]
