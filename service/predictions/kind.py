"""The "predict" kind: a batch of images classified by a model (service/predictions/task.py)."""

from service.jobs.kinds import JobKind
from service.predictions.spec import BatchPredictionSpec

PREDICT = JobKind(
    name="predict",
    spec=BatchPredictionSpec,
    task="service.predictions.task:predict",
    summary="classifies a zip of images or a dataset for POST /predictions",
)
