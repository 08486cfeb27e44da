"""Dependencies shared by the routers: settings, the database session, serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.config import Settings
from service.predictions.serving import Serving
from service.storage.db import Database

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Dependencies that only read the app's state are `async`: FastAPI runs a plain `def` one in
# its thread pool, a round trip to another thread in every request that uses it.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.database


def get_session(request: Request) -> Iterator[Session]:
    """The request's transaction: committed when the route returns, rolled back if it raises.

    Routes only flush; writing requests take SQLite's write lock up front.
    """
    database: Database = request.app.state.database
    with database.session(write=request.method not in READ_METHODS) as session:
        yield session


async def get_serving(request: Request) -> Serving:
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
# scope="function": the transaction commits before the answer is sent, so a client told 201
# can read what it created at once, and a failed commit is an error answer, not a lost write.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ServingDep = Annotated[Serving, Depends(get_serving)]
