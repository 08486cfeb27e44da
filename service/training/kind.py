"""The "train" kind: a job spec in, a stored model out (service/training/task.py)."""

from service.jobs.kinds import JobKind
from service.training.spec import JobSpec

TRAIN = JobKind(
    name="train",
    spec=JobSpec,
    task="service.training.task:train",
    summary="trains a model (spec: the job spec)",
)
