"""The "export" kind: a model converted to another format (service/exports/task.py)."""

from service.exports.spec import ExportSpec
from service.jobs.kinds import JobKind

EXPORT = JobKind(
    name="export",
    spec=ExportSpec,
    task="service.exports.task:export",
    summary="converts a model for POST /models/{model_id}/exports (spec: model_id and format)",
)
