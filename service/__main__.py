"""`python -m service api | worker | migrate | demo`."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

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


def settings_problem(error: ValidationError) -> str:
    """One line per bad setting: its environment variable and what it needs."""
    lines = []
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"error: setting {name}: {message} (got {item['input']!r})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as error:
        print(settings_problem(error), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "demo":
        from service.demo import run_demo

        return run_demo(data_dir=args.data_dir, port=args.port, epochs=args.epochs)
    if args.command == "migrate":
        from service.storage.db import Database

        database = Database(settings.database_url)
        database.upgrade()
        print(f"schema at {database.current_revision()} ({settings.database_url})")
        return 0
    return _serve(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.storage.db import SchemaNotCurrent, open_database

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


if __name__ == "__main__":
    sys.exit(main())
