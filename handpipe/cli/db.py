"""`handpipe db upgrade|status`: the schema migrations, run from a laptop against any database URL."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .errors import CliError, command


def add_commands(commands: Any) -> None:
    db = command(
        commands,
        "db",
        "database schema: upgrade it, or tell its version",
        "Apply the schema migrations to a database (`upgrade`), or tell which version it is at (`status`). The "
        "app never migrates by itself.",
        ["handpipe db status", "handpipe db upgrade --db-url mysql+pymysql://user:pw@host/handpipe"],
    )
    db.add_argument("db_command", choices=["upgrade", "status"])
    db.add_argument("--db-url", help="default $HANDPIPE_DB_URL or sqlite:///.handpipe/handpipe.db")
    db.set_defaults(run=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from chalicelib.adapters.database import Database, redacted_url
    from chalicelib.adapters.migrations import LATEST_VERSION, current_version, upgrade

    url = args.db_url or os.environ.get("HANDPIPE_DB_URL") or f"sqlite:///{Path('.handpipe/handpipe.db').resolve()}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        database = Database.from_url(url)
    except ValueError as error:
        raise CliError(str(error), 2) from None
    shown = redacted_url(url)
    if args.db_command == "upgrade":
        applied = upgrade(database)
        print(f"{shown}: applied migrations {applied}" if applied else f"{shown}: already at version {LATEST_VERSION}")
    else:
        version = current_version(database)
        state = "up to date" if version == LATEST_VERSION else "run `handpipe db upgrade`"
        print(f"{shown}: schema version {version} of {LATEST_VERSION} ({state})")
    return 0
