"""Named models: versions 1, 2, 3… per name in the order they were stored, and aliases
(`production`, `staging`, any label) that each point at one version and move atomically.

`resolve` is the one place where the ways a request can name a model — a model id, a name
(its latest version), a name and a version, a name and an alias — become a model row:
`/predict`, TF Serving's paths and the console all go through it. Versions are numbered by
`next_version` when the worker stores a model, from a counter per name that deleting a
version does not move back: a number is never given twice, and nothing renumbers them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session, load_only

from service.problems import Conflict, Invalid, NotFound
from service.storage.tables import ModelAlias, ModelName, TrainedModel, utcnow

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_ALIAS = re.compile(ALIAS_PATTERN)
ALIAS_RULE = (
    "an alias is 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit, "
    "and not all digits (that would read as a version)"
)
WAYS = "by model_id, name, name + version, or name + alias"

# One INSERT … ON CONFLICT DO UPDATE per dialect the service runs on.
_UPSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def next_version(session: Session, name: str) -> int:
    """The version number the next model stored under `name` gets: one past the last number
    given under it, deleted or not.

    Called in the transaction that stores the model. The upsert takes the name's counter row
    (PostgreSQL locks it until the transaction ends; SQLite runs one writer at a time), so
    two workers storing models of one name take turns and never pick the same number.
    """
    insert = _UPSERT[session.get_bind().dialect.name](ModelName)
    statement = (
        insert.values(name=name, last_version=1)
        .on_conflict_do_update(
            index_elements=[ModelName.name], set_={"last_version": ModelName.last_version + 1}
        )
        .returning(ModelName.last_version)
    )
    version = session.scalar(statement)
    assert version is not None  # RETURNING of the row just written
    return version


@dataclass(frozen=True)
class ModelRef:
    """Which model a request means: by id, or by name (latest), name + version, name + alias.

    `or_name`: the id may also be a name, tried after no model has that id (TF Serving's
    `/v1/models/{model}`, where clients of this service already send ids).
    """

    model_id: str | None = None
    name: str | None = None
    version: int | None = None
    alias: str | None = None
    or_name: bool = False


@dataclass(frozen=True)
class AliasRow:
    name: str
    alias: str
    version: int
    model_id: str
    updated_at: datetime


def check_alias(alias: str, *, part: str = "path", field: str = "alias") -> None:
    """Invalid unless `alias` can name an alias (see ALIAS_RULE)."""
    if not _ALIAS.fullmatch(alias) or alias.isdigit():
        raise Invalid(f"{alias!r} is not an alias: {ALIAS_RULE}", field=(field,), part=part)


def reference(
    *,
    model_id: str | None = None,
    name: str | None = None,
    version: int | None = None,
    alias: str | None = None,
    part: str = "body",
) -> ModelRef:
    """The model a request's fields name, exactly one way; Invalid names the field that
    conflicts with another, or the one missing."""
    fields = {"model_id": model_id, "name": name, "version": version, "alias": alias}
    given = [field for field, value in fields.items() if value is not None]
    if model_id is not None and len(given) > 1:
        raise Invalid(
            f"{given[1]} conflicts with model_id: name the model one way only, {WAYS}",
            field=(given[1],),
            part=part,
        )
    if version is not None and alias is not None:
        raise Invalid(
            f"alias conflicts with version: name the model one way only, {WAYS}",
            field=("alias",),
            part=part,
        )
    if model_id is None and name is None:
        missing, why = ("name", f"{given[0]} needs name") if given else ("model_id", "required")
        raise Invalid(f"{why}: name the model {WAYS}", field=(missing,), part=part)
    if alias is not None:
        check_alias(alias, part=part)
    return ModelRef(model_id=model_id, name=name, version=version, alias=alias)


def resolve(
    session: Session, ref: ModelRef, *, only: Sequence[InstrumentedAttribute[Any]] = ()
) -> TrainedModel:
    """The model row `ref` names; NotFound naming what does not exist.

    Read once per request: a prediction keeps the version it resolved to even if an alias
    moves while it runs, and the next request sees the move. `only`: the columns the caller
    reads, when it reads few (serving reads four; the others carry JSON to decode).
    """
    options = [load_only(*only)] if only else []
    if ref.model_id is not None:
        model = session.get(TrainedModel, ref.model_id, options=options)
        if model is not None:
            return model
        if ref.or_name and _latest_version(session, ref.model_id) is not None:
            return resolve(session, ModelRef(name=ref.model_id), only=only)
        what = "no model with id or name" if ref.or_name else "no model"
        raise NotFound(f"{what} {ref.model_id!r}", field=("model_id",))
    name = ref.name
    assert name is not None  # `reference` and the routes give an id or a name
    if ref.alias is not None:
        query = select(TrainedModel).options(*options)
        query = query.join(ModelAlias, ModelAlias.model_id == TrainedModel.id)
        model = session.scalar(query.where(ModelAlias.name == name, ModelAlias.alias == ref.alias))
        if model is None:
            _require_name(session, name)
            known = ", ".join(aliases_of(session, name)) or "none"
            raise NotFound(
                f"model {name!r} has no alias {ref.alias!r} (its aliases: {known})",
                field=("alias",),
            )
        return model
    query = select(TrainedModel).options(*options).where(TrainedModel.name == name)
    if ref.version is not None:
        model = session.scalar(query.where(TrainedModel.version == ref.version))
    else:
        model = session.scalar(query.order_by(TrainedModel.version.desc()).limit(1))
    if model is None:
        latest = _require_name(session, name)
        raise NotFound(
            f"model {name!r} has no version {ref.version} (versions 1 to {latest})",
            field=("version",),
        )
    return model


def _latest_version(session: Session, name: str) -> int | None:
    return session.scalar(select(func.max(TrainedModel.version)).where(TrainedModel.name == name))


def _require_name(session: Session, name: str) -> int:
    """The name's latest version; NotFound when no model has that name."""
    latest = _latest_version(session, name)
    if latest is None:
        raise NotFound(f"no model named {name!r}", field=("name",))
    return latest


def versions_of(session: Session, name: str) -> list[int]:
    """The name's version numbers, newest first."""
    query = select(TrainedModel.version).where(TrainedModel.name == name)
    return list(session.scalars(query.order_by(TrainedModel.version.desc())))


def aliases_of(session: Session, name: str) -> dict[str, int]:
    """The name's aliases and the version each points to, by alias."""
    rows = session.execute(
        select(ModelAlias.alias, TrainedModel.version)
        .join(TrainedModel, TrainedModel.id == ModelAlias.model_id)
        .where(ModelAlias.name == name)
        .order_by(ModelAlias.alias)
    )
    return {alias: version for alias, version in rows}


def _latest_versions() -> Select[Any]:
    """Each name with its number of versions and latest version number."""
    return select(
        TrainedModel.name,
        func.count().label("versions"),
        func.max(TrainedModel.version).label("latest"),
    ).group_by(TrainedModel.name)


def list_names(session: Session) -> list[dict[str, Any]]:
    """Every named model, by name: how many versions, the latest (its id and when it was
    stored) and the aliases."""
    counts = _latest_versions().subquery()
    rows = session.execute(
        select(
            counts.c.name,
            counts.c.versions,
            TrainedModel.version,
            TrainedModel.id,
            TrainedModel.created_at,
        )
        .join(
            TrainedModel,
            (TrainedModel.name == counts.c.name) & (TrainedModel.version == counts.c.latest),
        )
        .order_by(counts.c.name)
    )
    aliases: dict[str, dict[str, int]] = {}
    for name, alias, version in session.execute(
        select(ModelAlias.name, ModelAlias.alias, TrainedModel.version)
        .join(TrainedModel, TrainedModel.id == ModelAlias.model_id)
        .order_by(ModelAlias.alias)
    ):
        aliases.setdefault(name, {})[alias] = version
    return [
        {
            "name": name,
            "versions": versions,
            "latest_version": latest,
            "latest_model_id": model_id,
            "updated_at": created_at,
            "aliases": aliases.get(name, {}),
        }
        for name, versions, latest, model_id, created_at in rows
    ]


def named_model(session: Session, name: str) -> dict[str, Any]:
    """One named model: its versions newest first, each with the aliases on it."""
    _require_name(session, name)
    aliases = aliases_of(session, name)
    on_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        on_version.setdefault(version, []).append(alias)
    versions = session.scalars(
        select(TrainedModel).where(TrainedModel.name == name).order_by(TrainedModel.version.desc())
    )
    return {
        "name": name,
        "aliases": aliases,
        "versions": [
            {
                "version": model.version,
                "model_id": model.id,
                "created_at": model.created_at,
                "metrics": model.metrics,
                "aliases": on_version.get(model.version, []),
            }
            for model in versions
        ],
    }


def get_alias(session: Session, name: str, alias: str) -> AliasRow:
    check_alias(alias)
    row = session.execute(
        select(ModelAlias, TrainedModel.version)
        .join(TrainedModel, TrainedModel.id == ModelAlias.model_id)
        .where(ModelAlias.name == name, ModelAlias.alias == alias)
    ).first()
    if row is None:
        _require_name(session, name)
        raise NotFound(f"model {name!r} has no alias {alias!r}", field=("alias",))
    stored, version = row
    return AliasRow(name, alias, version, stored.model_id, stored.updated_at)


def set_alias(session: Session, name: str, alias: str, version: int) -> AliasRow:
    """Point `alias` at `version` of `name`, creating or moving it in one statement, so a
    reader sees the old version or the new one and never neither."""
    check_alias(alias)
    # FOR KEY SHARE (PostgreSQL; SQLite has one writer anyway): a concurrent delete of this
    # version waits for us, and we wait for it, then find the version gone (404), rather
    # than the foreign key failing at commit.
    model_id = session.scalar(
        select(TrainedModel.id)
        .where(TrainedModel.name == name, TrainedModel.version == version)
        .with_for_update(key_share=True)
    )
    if model_id is None:
        latest = _require_name(session, name)
        raise NotFound(
            f"model {name!r} has no version {version} (versions 1 to {latest})",
            field=("version",),
        )
    now = utcnow()
    insert = _UPSERT[session.get_bind().dialect.name](ModelAlias)
    statement = insert.values(name=name, alias=alias, model_id=model_id, updated_at=now)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[ModelAlias.name, ModelAlias.alias],
            set_={"model_id": model_id, "updated_at": now},
        )
    )
    return AliasRow(name, alias, version, model_id, now)


def delete_alias(session: Session, name: str, alias: str) -> None:
    check_alias(alias)
    result = session.execute(
        delete(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        _require_name(session, name)
        raise NotFound(f"model {name!r} has no alias {alias!r}", field=("alias",))


def ensure_unaliased(session: Session, model: TrainedModel) -> None:
    """Conflict, naming the aliases, while any alias points to the model: deleting it would
    leave them pointing nowhere (the foreign key refuses too, but as an error, not a 409)."""
    # The row locked first (PostgreSQL), so an alias set concurrently waits for the delete
    # and then finds the version gone, instead of slipping in between check and delete.
    session.execute(select(TrainedModel.id).where(TrainedModel.id == model.id).with_for_update())
    aliases = list(
        session.scalars(
            select(ModelAlias.alias)
            .where(ModelAlias.model_id == model.id)
            .order_by(ModelAlias.alias)
        )
    )
    if aliases:
        listed = ", ".join(repr(alias) for alias in aliases)
        which = f"aliases {listed} point" if len(aliases) > 1 else f"alias {listed} points"
        raise Conflict(
            f"model {model.id} is version {model.version} of {model.name!r}, and {which} to "
            "it; move or delete them first (PUT or DELETE /registry/{name}/aliases/{alias})"
        )
