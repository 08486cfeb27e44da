"""A trained model's exports to other formats: queued as export jobs, converted and checked
by the worker (service/exports/service.py), downloaded as a zip with the labels and the report."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response, status

from service.api.deps import SessionDep, SettingsDep
from service.exports import service as exports
from service.exports.schemas import ExportRead
from service.exports.spec import ExportFormat, ExportRequest
from service.storage.tables import Job, ModelExport
from service.webhook_addresses import check_submitted

router = APIRouter(prefix="/models/{model_id}/exports", tags=["models"])

FORMAT = Path(description="keras, tflite, tflite-fp16, tflite-int8 or onnx")


def _export_read(record: ModelExport, job: Job | None) -> ExportRead:
    state, error = exports.export_status(job)
    return ExportRead.model_validate(
        {
            "id": record.id,
            "model_id": record.model_id,
            "format": record.format,
            "status": state,
            "error": error,
            "job_id": record.job_id,
            "report": record.report,
            "size_bytes": record.size_bytes,
            "sha256": record.sha256,
            "created_at": record.created_at,
        }
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportRead,
    summary="Convert the model to another format (queued; the worker converts and checks it)",
    responses={
        404: {"description": "Unknown model"},
        409: {
            "description": "An export of the format is already queued, running or ready; or "
            "the model has no validation images to check parity on (trained without a "
            "validation split, or its dataset deleted)"
        },
        422: {"description": "Unknown format; `detail` names it"},
        501: {"description": "ONNX: tf2onnx does not support the installed TensorFlow"},
    },
)
def create_export(
    session: SessionDep, settings: SettingsDep, model_id: str, body: ExportRequest
) -> ExportRead:
    check_submitted(body.webhook_url, settings.webhook_allowed_networks)
    record = exports.request_export(session, model_id, body)
    return _export_read(*exports.get_export(session, model_id, record.format))


@router.get(
    "",
    response_model=list[ExportRead],
    summary="The model's exports, with their status and parity figures",
    responses={404: {"description": "Unknown model"}},
)
def list_exports(session: SessionDep, model_id: str) -> list[ExportRead]:
    return [_export_read(record, job) for record, job in exports.list_exports(session, model_id)]


@router.get(
    "/{format}",
    response_class=Response,
    summary="Download an export: a zip of the model file, labels.txt and export.json",
    responses={
        200: {"content": {"application/zip": {}}, "description": "The archive"},
        404: {"description": "Unknown model, no export of the format, or it failed"},
        409: {"description": "The export is still queued or running; `detail` says which"},
    },
)
def download_export(session: SessionDep, model_id: str, format: ExportFormat = FORMAT) -> Response:
    record = exports.export_file(session, model_id, format)
    return Response(
        record.data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{model_id}-{format}.zip"',
            "ETag": f'"{record.sha256}"',
        },
    )


@router.delete(
    "/{format}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete an export; a queued or running export job is cancelled",
    responses={404: {"description": "Unknown model, or no export of the format"}},
)
def delete_export(session: SessionDep, model_id: str, format: ExportFormat = FORMAT) -> Response:
    exports.delete_export(session, model_id, format)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
