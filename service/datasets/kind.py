"""The "import" kind: a folder on the service's host read into a dataset
(service/datasets/task.py)."""

from service.datasets.spec import ImportSpec
from service.jobs.kinds import JobKind

IMPORT = JobKind(
    name="import",
    spec=ImportSpec,
    task="service.datasets.task:import_folder",
    summary="reads a server-side folder into a dataset for POST /datasets/import (spec: the "
    "request and the resolved directory)",
)
