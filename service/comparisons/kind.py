"""The "compare" kind: two models scored on the same images (service/comparisons/task.py)."""

from service.comparisons.spec import ComparisonSpec
from service.jobs.kinds import JobKind

COMPARE = JobKind(
    name="compare",
    spec=ComparisonSpec,
    task="service.comparisons.task:compare",
    summary="scores two models on one dataset version's images for POST /comparisons",
)
