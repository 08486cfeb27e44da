"""`python -m service api | worker | migrate | demo`."""

from __future__ import annotations

import argparse
import logging
import sys

from service.config import get_settings


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from service.demo import run_demo

        return run_demo(data_dir=args.data_dir, port=args.port, epochs=args.epochs)

    settings = get_settings()
    if args.command == "migrate":
        from service.storage.db import Database

        database = Database(settings.database_url)
        database.upgrade()
        print(f"schema at {database.current_revision()} ({settings.database_url})")
        return 0

    from service.storage.db import SchemaNotCurrent

    try:
        if args.command == "api":
            import uvicorn

            from service.api.app import create_app
            from service.storage.db import open_database

            open_database(settings.database_url, auto_migrate=settings.auto_migrate).dispose()
            uvicorn.run(create_app(settings), host=args.host, port=args.port)
        else:
            from service.storage.db import open_database
            from service.worker import run_worker

            run_worker(
                open_database(settings.database_url, auto_migrate=settings.auto_migrate), settings
            )
    except SchemaNotCurrent as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
