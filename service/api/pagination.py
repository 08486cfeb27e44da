"""Keyset pagination for every list: newest first, `limit` rows a page, the next page's URL in
a `Link: <…>; rel="next"` header (as GitHub's API does), so each list stays a JSON array.

The cursor is opaque to clients: the (created_at, id) of the page's last row. A page costs
an index walk from there, however deep it is, unlike OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request, Response
from sqlalchemy import Select, and_, or_

from service.api.errors import invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Row = TypeVar("Row")


class Keyed(Protocol):
    id: Any
    created_at: Any


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[datetime, str] | None


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
        raise invalid(
            ["cursor"],
            "not a cursor this service gave; follow the Link header's rel=\"next\" URL",
            part="query",
        ) from None


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (newest first).")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description='Opaque; taken from the `Link: <…>; rel="next"` header of the page before.',
        ),
    ] = None,
) -> Page:
    return Page(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[Page, Depends(page_params)]

LINK_HEADER = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    }
}


def keyset(query: Select[Any], table: type[Keyed], page: Page) -> Select[Any]:
    """`query` ordered newest first, starting after the cursor, one row past the page (to
    learn whether another page follows)."""
    query = query.order_by(table.created_at.desc(), table.id.desc())
    if page.after is not None:
        created_at, row_id = page.after
        query = query.where(
            or_(
                table.created_at < created_at,
                and_(table.created_at == created_at, table.id < row_id),
            )
        )
    return query.limit(page.limit + 1)


def one_page(
    rows: Sequence[Row],
    page: Page,
    request: Request,
    response: Response,
    key: Callable[[Row], Keyed] = lambda row: row,  # type: ignore[assignment,return-value]
) -> list[Row]:
    """The page's rows; sets the Link header when more follow. `key` finds the table object
    in a row that holds more than one."""
    if len(rows) <= page.limit:
        return list(rows)
    kept = list(rows[: page.limit])
    tail = key(kept[-1])
    cursor = encode_cursor(tail.created_at, tail.id)
    url = request.url.include_query_params(cursor=cursor, limit=page.limit)
    response.headers["Link"] = f'<{url}>; rel="next"'
    return kept
