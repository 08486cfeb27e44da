"""The FastAPI application: routers, auth, body limits, and the lifespan that opens the database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import metrics, web
from service.api import errors, openapi
from service.api.auth import require_api_key
from service.api.gate import Gate
from service.api.headers import SecurityHeaders
from service.api.limits import BodySizeLimit
from service.api.request_ids import RequestIds
from service.api.routes import (
    advice,
    backbones,
    comparisons,
    datasets,
    exports,
    health,
    jobs,
    models,
    monitoring,
    predict,
    predictions,
    registry,
    review,
    searches,
    weights,
    workers,
)
from service.api.routes import metrics as metrics_route
from service.config import Settings, get_settings
from service.job_kinds import KINDS
from service.ml.batching import Batcher
from service.ml.images import limit_concurrent_decodes
from service.ml.model_cache import ModelCache
from service.monitoring.watch import Monitoring
from service.predictions import warmup
from service.predictions.serving import Serving
from service.security import LoginThrottle
from service.storage.db import open_database

DESCRIPTION = """
Upload a zip of labelled images, pick a pretrained Keras backbone, a classifier head and
which layers to freeze; a worker trains it and the model is served here.
"""
# JSON bodies (job specs) are small; uploads have their own settings.
DEFAULT_BODY_LIMIT = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Uploads, /predict and thumbnails decode in threads: bound how many at once.
        limit_concurrent_decodes(settings.max_concurrent_decodes)
        database = open_database(settings.database_url, auto_migrate=settings.auto_migrate)
        app.state.database = database
        app.state.model_cache = ModelCache(
            settings.cache_dir / "models",
            settings.model_cache_size,
            freeze=settings.freeze_loaded_models,
        )
        app.state.batcher = Batcher(
            max_batch=settings.predict_max_batch,
            max_wait=settings.predict_max_wait_ms / 1000,
            threads=settings.serving_lanes,
            on_batch=metrics.observe_batch,
        )
        app.state.monitoring = Monitoring(
            database,
            drift_webhook_url=settings.drift_webhook_url,
            refresh_seconds=settings.capture_refresh_seconds,
        )
        app.state.metrics_registry = metrics.api_registry(
            database, app.state.model_cache, KINDS.names, app.state.monitoring
        )
        app.state.serving = Serving(
            database=database,
            cache=app.state.model_cache,
            batcher=app.state.batcher,
            max_images=settings.max_predict_files,
            recheck_seconds=settings.predict_recheck_seconds,
        )
        app.state.warmup = (
            warmup.start(
                app.state.serving, app.state.model_cache.directory, settings.model_cache_size
            )
            if settings.warm_models
            else warmup.finished()
        )
        try:
            yield
        finally:
            app.state.batcher.close()
            app.state.monitoring.close()
            app.state.model_cache.close()
            database.dispose()

    app = FastAPI(
        title="Transfer-learning service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served from vendored files by `openapi.install`, not from FastAPI's CDN.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=openapi.operation_id,
        # /docs lists the tags in this order, not in the order their routes are matched.
        openapi_tags=[{"name": name} for name in TAG_ORDER],
    )
    app.state.settings = settings
    app.state.login_throttle = LoginThrottle()
    errors.install(app)
    openapi.install(app)
    _include_routers(app)
    _add_middleware(app, settings)
    return app


TAG_ORDER = (
    "health",
    "backbones",
    "datasets",
    "jobs",
    "models",
    "predict",
    "monitoring",
    "review",
    "comparisons",
    "searches",
    "registry",
    "weights",
    "workers",
)

# Every JSON router but health's and metrics' (their own guards) requires the API key.
# Prediction's comes first, before the console's too: a request is matched against each route
# in order, and /predict is the one asked most often and fastest answered.
SECURED = (
    predict,
    backbones,
    datasets,
    advice,
    jobs,
    models,
    exports,
    predictions,
    monitoring,
    review,
    comparisons,
    searches,
    registry,
    weights,
    workers,
)


def _include_routers(app: FastAPI) -> None:
    for module in SECURED:
        app.include_router(module.router, dependencies=[Depends(require_api_key)])
    app.include_router(health.router)
    app.include_router(metrics_route.router)  # its own guard: the key, or an open network
    web.install(app)


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # The last added runs first: CORS answers preflights; every answer gets its request id
    # and security headers; the gate refuses a request before the body limit reads any of it.
    app.add_middleware(BodySizeLimit, limit_for=lambda path: body_limit(settings, path))
    app.add_middleware(Gate, settings=settings)
    app.add_middleware(RequestIds)
    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Link"],  # list pagination
        )


# Images added to a dataset (a dataset's upload in parts) or to its unlabelled pool.
APPEND = re.compile(r"(/console)?/datasets/[^/]+/(images|pool)|/console/models/[^/]+/review/pool")


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a path takes: uploads have their settings, the console's too."""
    if path in ("/datasets", "/console/datasets", "/predictions", "/console/predictions"):
        return settings.max_dataset_bytes
    if APPEND.fullmatch(path):
        return settings.max_dataset_bytes
    if path == "/predict" or path.startswith("/v1/models/"):
        return settings.max_predict_bytes
    if path.startswith("/console/models/") and path.endswith("/predict"):
        return settings.max_predict_bytes
    if path == "/weights":
        return settings.max_weights_bytes
    return DEFAULT_BODY_LIMIT
