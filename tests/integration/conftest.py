"""The integration tier's shared fixtures: the SQLite and MariaDB stores of the contract suite and
the API `env` (chalice.test.Client on moto and SQLite) and `http_api` (the same app over loopback HTTP),
defined in tests/support and offered here."""

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
from tests.support.http_api import http_api

__all__ = [
    "clock",
    "db",
    "empty_db",
    "env",
    "http_api",
    "jobs",
    "mysql_migrated_url",
    "mysql_server",
    "mysql_session_db",
    "open_db",
    "store",
    "videos",
]
