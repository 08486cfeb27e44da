"""Dependencies shared by the routers: settings, the database session, the model cache, auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.config import Settings
from service.ml.serving import ModelCache
from service.serving import Serving
from service.storage.db import Database

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_session(request: Request) -> Iterator[Session]:
    """The request's transaction: committed when the route returns, rolled back if it raises.

    Routes only flush; writing requests take SQLite's write lock up front.
    """
    database: Database = request.app.state.database
    with database.session(write=request.method not in READ_METHODS) as session:
        yield session


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


_bearer = HTTPBearer(auto_error=False, description="Needed when the API_KEY setting is given.")


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[Session, Depends(get_session)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
ServingDep = Annotated[Serving, Depends(get_serving)]
