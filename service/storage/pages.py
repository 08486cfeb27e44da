"""Keyset pages of any list, newest first: `limit` rows after a cursor.

The cursor is opaque to clients: the (created_at, id) of the page's last row. A page costs
an index walk from there (every listed table has an index on (created_at, id)), however
deep it is, unlike OFFSET; rows added meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from service.problems import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Row = TypeVar("Row")


class Keyed(Protocol):
    id: Any
    created_at: Any


class BadCursor(Invalid):
    """A cursor this service did not give: the request's `cursor` query parameter, a 422
    wherever a list is asked for, the API's or the console's."""

    def __init__(self) -> None:
        message = 'not a cursor this service gave; follow the Link header\'s rel="next" URL'
        super().__init__(message, field=("cursor",), part="query")


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @property
    def after(self) -> tuple[datetime, str] | None:
        return decode_cursor(self.cursor) if self.cursor else None


@dataclass(frozen=True)
class PageOf(Generic[Row]):
    rows: list[Row]
    next_cursor: str | None  # None on the last page


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not isinstance(row_id, str):
            raise ValueError(cursor)
        return moment, row_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor() from None


def after_page(
    rows: list[Row], limit: int, key: Callable[[Row], int]
) -> tuple[list[Row], int | None]:
    """Rows fetched one past `limit`, in increasing `key` order (lists keyed by a number
    rather than a cursor: a dataset's images, its versions): the page, and the key to pass as
    `after` for the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], key(rows[limit - 1])


def fetch_page(
    session: Session,
    query: Select[Any],
    table: type[Keyed],
    page: Page,
    *,
    scalars: bool = True,
    key: Callable[[Any], Keyed] = lambda row: row,
) -> PageOf[Any]:
    """One page of `query`'s rows of `table`, newest first. `key` finds the table's object in
    a row that holds more (with `scalars=False`, rows are tuples)."""
    query = query.order_by(table.created_at.desc(), table.id.desc())
    after = page.after
    if after is not None:
        created_at, row_id = after
        query = query.where(
            or_(
                table.created_at < created_at,
                and_(table.created_at == created_at, table.id < row_id),
            )
        )
    query = query.limit(page.limit + 1)  # one past the page: does another follow?
    rows = list(session.scalars(query) if scalars else session.execute(query))
    if len(rows) <= page.limit:
        return PageOf(rows, None)
    rows = rows[: page.limit]
    last = key(rows[-1])
    return PageOf(rows, encode_cursor(last.created_at, last.id))


def fetch_by(
    session: Session,
    query: Select[Any],
    column: Any,
    id_column: Any,
    page: Page,
    *,
    descending: bool,
) -> PageOf[Any]:
    """One page of `query`'s rows (tuples) ordered by a numeric `column`, ties by `id_column`,
    both descending or both ascending: `fetch_page`'s keyset for a list sorted by something
    other than its time. The cursor holds the last row's (value, id). `column` holds no NULLs
    in the rows queried."""
    query = query.order_by(
        *((column.desc(), id_column.desc()) if descending else (column.asc(), id_column.asc()))
    )
    if page.cursor:
        value, row_id = _decode_key(page.cursor)
        past = (column < value) if descending else (column > value)
        beyond = (id_column < row_id) if descending else (id_column > row_id)
        query = query.where(or_(past, and_(column == value, beyond)))
    rows = list(session.execute(query.limit(page.limit + 1)))
    if len(rows) <= page.limit:
        return PageOf(rows, None)
    rows = rows[: page.limit]
    value = rows[-1]._mapping[column.key]
    row_id = rows[-1]._mapping[id_column.key]
    return PageOf(rows, _encode_key(value, row_id))


def _encode_key(value: float, row_id: str) -> str:
    raw = json.dumps([value, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_key(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = json.loads(raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(cursor)
        if not isinstance(row_id, str):
            raise ValueError(cursor)
        return value, row_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor() from None
