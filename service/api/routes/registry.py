"""The registry over HTTP: named models, their versions, and aliases set, moved and removed.
The logic is `service.registry`'s; these routes only map paths and bodies onto it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from service.api.deps import SessionDep
from service.models import registry
from service.models.registry import AliasRow
from service.models.schemas import AliasRead, AliasWrite, NamedModelRead, RegisteredModel
from service.storage.tables import NAME_LENGTH

router = APIRouter(prefix="/registry", tags=["registry"])

NamePath = Annotated[
    str, Path(max_length=NAME_LENGTH, description="A named model: a job's `name`, or GET /registry")
]
AliasPath = Annotated[
    str,
    Path(
        max_length=64,
        pattern=registry.ALIAS_PATTERN,
        description="`production`, `staging`, any label: " + registry.ALIAS_RULE,
    ),
]
UNKNOWN = {404: {"description": "Unknown name, or no such version or alias of it"}}
BAD_ALIAS = {422: {"description": "Not an alias: " + registry.ALIAS_RULE}}


@router.get(
    "",
    response_model=list[RegisteredModel],
    summary="Every named model, by name: its number of versions, the latest, the aliases",
)
def list_named_models(session: SessionDep) -> list[dict[str, Any]]:
    return registry.list_names(session)


@router.get(
    "/{name}",
    response_model=NamedModelRead,
    summary="A named model's versions, newest first, each with its model id and aliases",
    responses=UNKNOWN,
)
def read_named_model(session: SessionDep, name: NamePath) -> dict[str, Any]:
    return registry.named_model(session, name)


@router.get(
    "/{name}/aliases/{alias}",
    response_model=AliasRead,
    summary="The version an alias points to",
    responses={**UNKNOWN, **BAD_ALIAS},
)
def read_alias(session: SessionDep, name: NamePath, alias: AliasPath) -> AliasRow:
    return registry.get_alias(session, name, alias)


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasRead,
    summary="Set an alias, or move it to another version, in one atomic write",
    description="Requests that resolve the alias while it moves run on the version they "
    "resolved: the old one or the new one, never neither.",
    responses={**UNKNOWN, **BAD_ALIAS},
)
def set_alias(session: SessionDep, name: NamePath, alias: AliasPath, body: AliasWrite) -> AliasRow:
    return registry.set_alias(session, name, alias, body.version)


@router.delete(
    "/{name}/aliases/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove an alias (the version it pointed to stays)",
    responses={**UNKNOWN, **BAD_ALIAS},
)
def delete_alias(session: SessionDep, name: NamePath, alias: AliasPath) -> Response:
    registry.delete_alias(session, name, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
