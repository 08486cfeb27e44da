"""`GET /metrics`: this replica's Prometheus metrics (service/metrics.py).

Left out of the OpenAPI document: it is for Prometheus, not for API clients, and answers
text in Prometheus' own format. Guarded by `require_metrics_access` (the API key, unless the
client's address lies in METRICS_OPEN_NETWORKS); the app includes it without the API key.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from service import metrics
from service.api.auth import require_metrics_access

router = APIRouter(dependencies=[Depends(require_metrics_access)])


@router.get("/metrics", include_in_schema=False)
def read_metrics(request: Request) -> Response:
    # A plain def: the collectors query the database, so this runs on a worker thread.
    body = metrics.exposition(request.app.state.metrics_registry)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
