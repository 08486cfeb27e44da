"""The "search" kind: the best spec within a budget (service/searches/task.py)."""

from service.jobs.kinds import JobKind
from service.searches.spec import SearchSpec

SEARCH = JobKind(
    name="search",
    spec=SearchSpec,
    task="service.searches.task:search",
    summary="searches for the best spec within a budget for POST /searches",
)
