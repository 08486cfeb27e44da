"""The "export" task: a model converted to another format, each file checked in its own
runtime against the SavedModel on the validation split; below its bar the figures are kept
in the export's report and the job fails with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.exports.service import (
    PARITY_BARS,
    load_export_inputs,
    onnx_unsupported,
    report_figures,
)
from service.exports.spec import ExportSpec
from service.jobs.context import JobContext
from service.jobs.kinds import Outcome
from service.problems import Problem
from service.storage.tables import ModelExport
from service.training.task import from_ml


def export(context: JobContext, spec: ExportSpec) -> Outcome:
    """Convert a model and check its parity; what stores the file. Below its bar the
    figures are stored in the export's report and the job fails with them."""
    from service.ml.convert import export_model
    from service.ml.export import sha256

    if spec.format == "onnx" and (reason := onnx_unsupported()) is not None:
        raise Problem(reason)
    inputs = load_export_inputs(context.db, spec)
    bar = PARITY_BARS[spec.format]
    with from_ml():
        result = export_model(inputs, bar=bar, should_stop=context.monitor.should_stop)
    if not result.passed:
        context.write_while_owned(_export_values(context.claim.job_id, report=result.report))
        raise Problem(
            f"the {spec.format} export misses its parity bar: {report_figures(result.report)}"
        )
    store = _export_values(
        context.claim.job_id,
        data=result.archive,
        size_bytes=len(result.archive),
        sha256=sha256(result.archive),
        report=result.report,
    )
    return Outcome(store, f"{spec.format} export of model {spec.model_id}")


def _export_values(job_id: str, **values: Any) -> Callable[[Session], None]:
    def write(session: Session) -> None:
        session.execute(update(ModelExport).where(ModelExport.job_id == job_id).values(values))

    return write
