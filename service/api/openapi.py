"""The OpenAPI document and the two pages that read it, Swagger UI (`/docs`) and ReDoc
(`/redoc`), served from the vendored files under `service/web/static/vendor`.

FastAPI's own pages load their scripts, a favicon and Google Fonts from CDNs, so on a machine
without internet they are blank; these load nothing from anywhere but this service. The
document is post-processed once so that mainstream client generators read it as meant: see
`mark_file_fields`. Operation ids come from `operation_id`, given to `FastAPI(...)` because
FastAPI also names the multipart body schemas after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse
from starlette.routing import Mount

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
STATIC_URL = "/static"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
# Inline, so the browser asks no one for an icon (FastAPI's default is on fastapi.tiangolo.com).
FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='16' height='16' rx='3' fill='%23336699'/%3E%3C/svg%3E"
)
FILE_MEDIA_TYPE = "application/octet-stream"
# ReDoc 2 always shows Redocly's logo from cdn.redoc.ly, with no option to turn it off. React
# sets an image's source twice, by `setAttribute` and then by the `src` property; swapping that
# one URL for an empty image in both keeps the page from asking anyone outside the service,
# and ReDoc drops an image that fails to load.
REDOC_NO_LOGO = """<script>
(() => {
  const local = (value) => String(value).startsWith("https://cdn.redoc.ly/") ? "data:," : value;
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    return setAttribute.call(this, name, name === "src" ? local(value) : value);
  };
  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    ...src,
    set(value) { src.set.call(this, local(value)); },
  });
})();
</script>
"""


def operation_id(route: APIRoute) -> str:
    """`<tag>-<verb…>`, read well as generated function names: `create_dataset` under tag
    `datasets` is `datasets-create`, `tf_serving_predict` under `predict` is
    `predict-tf-serving`, and `predict` itself stays `predict`.

    The resource noun is dropped (singular or plural) because the tag already says it.
    """
    if not route.tags:
        return route.name.replace("_", "-")
    tag = str(route.tags[0])
    nouns = {tag, tag.removesuffix("s")}
    words = [word for word in route.name.split("_") if word not in nouns]
    return "-".join([tag, *words])


def mark_file_fields(node: Any) -> None:
    """Add `format: binary` beside FastAPI's `contentMediaType: application/octet-stream`.

    OpenAPI 3.1 spells a file as the latter, but openapi-python-client and other generators
    only recognise the OpenAPI 3.0 spelling and would send a file field as text. Both
    together are valid 3.1 and read by every tool. Changes `node` in place, at any depth
    (array items included).
    """
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == FILE_MEDIA_TYPE:
            node.setdefault("format", "binary")
        for value in node.values():
            mark_file_fields(value)
    elif isinstance(node, list):
        for item in node:
            mark_file_fields(item)


def install(app: FastAPI) -> None:
    """Serve `/docs`, `/docs/oauth2-redirect` and `/redoc` from vendored files, and make
    `app.openapi()` return the post-processed document.

    Expects `FastAPI(docs_url=None, redoc_url=None)`, so that FastAPI's CDN pages are not
    registered first and shadow these.
    """
    _mount_static(app)
    _add_pages(app)
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # Built lazily, like FastAPI's, so routes added after `install` are in it.
            schema = original()
            mark_file_fields(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _mount_static(app: FastAPI) -> None:
    """Reuse a `/static` mount someone else made (the console's); otherwise make it."""
    if not any(isinstance(route, Mount) and route.path == STATIC_URL for route in app.routes):
        app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")


def _root(request: Request) -> str:
    # Behind a proxy that strips a prefix, page links must carry it, as FastAPI's do.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _add_pages(app: FastAPI) -> None:
    openapi_url = app.openapi_url or "/openapi.json"
    vendor = f"{STATIC_URL}/vendor"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{vendor}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{vendor}/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            # No validator badge: it would send the document to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{vendor}/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
        html = bytes(page.body).decode().replace("</head>", f"{REDOC_NO_LOGO}</head>", 1)
        return HTMLResponse(html)

    # Plain routes, outside the OpenAPI document and the API key, like FastAPI's own.
    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
