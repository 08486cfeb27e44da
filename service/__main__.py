"""`python -m service api | worker | migrate | demo`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from typing import Any

from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from service.config import Settings, get_settings
from service.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    commands.add_parser("worker", help="train queued jobs until stopped")
    commands.add_parser("migrate", help="bring the database schema to the newest migration")
    demo = commands.add_parser("demo", help="the whole loop on scikit-learn's digits")
    demo.add_argument("--data-dir", default="demo-data")
    demo.add_argument("--port", type=int, default=0, help="0: any free port")
    demo.add_argument("--epochs", type=int, default=5)
    return parser


# Settings whose values are secrets: a rejected one is named, its value never shown (an error
# line ends up in terminals, CI logs and tickets).
SECRET_SETTING = re.compile(r"key|secret|password|token|database_url", re.IGNORECASE)


def settings_problem(error: ValidationError) -> str:
    """One line per bad setting: its environment variable, what it needs, and what it got
    unless that is a secret (or, for a rule over several settings, all of them)."""
    lines = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        shown = "" if not field or SECRET_SETTING.search(field) else f" (got {item['input']!r})"
        lines.append(f"error: setting {field.upper() or 'settings'}: {message}{shown}")
    return "\n".join(lines)


def shown_url(url: str) -> str:
    """A database URL as it may be printed: its password as ***."""
    return make_url(url).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as error:
        print(settings_problem(error), file=sys.stderr)
        return 2
    try:
        make_url(settings.database_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        # SQLAlchemy's own message may quote the whole URL, password and all.
        print("error: setting DATABASE_URL: not a database URL SQLAlchemy reads", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "demo":
        from service.demo import run_demo

        return run_demo(data_dir=args.data_dir, port=args.port, epochs=args.epochs)
    if args.command == "migrate":
        from service.storage.db import Database

        database = Database(settings.database_url)
        database.upgrade()
        print(f"schema at {database.current_revision()} ({shown_url(settings.database_url)})")
        return 0
    return _serve(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.storage.db import SchemaNotCurrent, open_database

    if args.command == "api" and (problem := open_without_key(settings, args.host)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.command == "api":
            import uvicorn

            from service.api.app import create_app
            from service.ml.model_cache import configure_tensorflow_threads

            configure_tensorflow_threads(
                intra_op=settings.serving_intra_op_threads, inter_op=settings.tf_inter_op_threads
            )
            open_database(settings.database_url, auto_migrate=settings.auto_migrate).dispose()
            # JSON lines: uvicorn's own loggers go through ours instead of its text handlers.
            json_lines = settings.log_format == "json"
            if json_lines:
                logging.getLogger("uvicorn").setLevel(settings.log_level)
            uvicorn.run(
                create_app(settings),
                host=args.host,
                port=args.port,
                log_config=None if json_lines else uvicorn.config.LOGGING_CONFIG,
                **proxy_options(settings),
            )
        else:
            from service.job_kinds import KINDS
            from service.jobs.runner import run_worker

            database = open_database(settings.database_url, auto_migrate=settings.auto_migrate)
            run_worker(database, settings, KINDS)
    except SchemaNotCurrent as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


def open_without_key(settings: Settings, host: str) -> str | None:
    """Why the API must not start: listening beyond loopback with no key would give the
    service to anyone who reaches the port, unless the operator said so."""
    if settings.api_key is not None or settings.allow_open_without_key or is_loopback(host):
        return None
    return (
        f"without API_KEY the API listens on loopback only, not on {host!r}: set API_KEY "
        "(at least 16 characters), or ALLOW_OPEN_WITHOUT_KEY=true to serve anyone who "
        "reaches the port"
    )


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default, which lets any local
    process pose as any address (METRICS_OPEN_NETWORKS, the login backoff): only the
    proxies FORWARDED_ALLOW_IPS names are believed, none by default."""
    trusted = settings.forwarded_allow_ips.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


if __name__ == "__main__":
    sys.exit(main())
