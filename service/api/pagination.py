"""Lists over HTTP: `limit` and `cursor` query parameters, and the next page's URL in a
`Link: <…>; rel="next"` header (as GitHub's API does), so each list stays a JSON array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response

from service.storage.pages import DEFAULT_LIMIT, MAX_LIMIT, Page, PageOf
from service.storage.tables import NAME_LENGTH

Row = TypeVar("Row")


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (newest first).")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=NAME_LENGTH,
            description='Opaque; taken from the `Link: <…>; rel="next"` header of the page before.',
        ),
    ] = None,
) -> Page:
    page = Page(limit=limit, cursor=cursor)
    page.after  # noqa: B018 -- decoded now: a bad cursor is a 422 naming it (BadCursor)
    return page


PageDep = Annotated[Page, Depends(page_params)]

LINK_HEADER = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    }
}


def link_after(
    rows: Sequence[Row], next_after: int | None, limit: int, request: Request, response: Response
) -> Sequence[Row]:
    """The rows of a list keyed by a number (`after`), with the Link header set when another
    page follows."""
    if next_after is not None:
        url = request.url.include_query_params(after=next_after, limit=limit)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return rows


def link_next(page: PageOf[Row], limit: int, request: Request, response: Response) -> list[Any]:
    """The page's rows, with the Link header set when another page follows."""
    if page.next_cursor is not None:
        url = request.url.include_query_params(cursor=page.next_cursor, limit=limit)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return page.rows
