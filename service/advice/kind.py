"""The "advice" kind: a dataset measured against a backbone (service/advice/task.py)."""

from service.advice.spec import AdviceSpec
from service.jobs.kinds import JobKind

ADVICE = JobKind(
    name="advice",
    spec=AdviceSpec,
    task="service.advice.task:advise",
    summary="measures a dataset for POST /datasets/{dataset_id}/advice (spec: the advice "
    "request and dataset_id)",
)
