"""The integration tier's shared fixtures: the SQLite and MariaDB stores of the contract suite and
the API `env` (chalice.test.Client on moto and SQLite), defined in tests/support and offered here."""

from tests.support.api import env
from tests.support.databases import (
    clock,
    db,
    empty_db,
    jobs,
    mysql_migrated_url,
    mysql_server,
    mysql_session_db,
    open_db,
    store,
    videos,
)

__all__ = [
    "clock",
    "db",
    "empty_db",
    "env",
    "jobs",
    "mysql_migrated_url",
    "mysql_server",
    "mysql_session_db",
    "open_db",
    "store",
    "videos",
]
