"""The SQL connection layer: one wrapper that speaks SQLite (local stack, tests) and MySQL (AWS)
with the same SQL, its dialect differences, and the errors services map to HTTP."""

from __future__ import annotations

import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

Dialect = Literal["sqlite", "mysql"]


Row = dict[str, Any]


_T = TypeVar("_T")


_URL_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory: "
    "or mysql+pymysql://user:password@host:port/dbname (mysql:// is accepted too)"
)


# Client errors that mean "no server to talk to" rather than "bad SQL": 2002/2003 cannot connect,
# 2005 unknown host, 2006 gone away, 2013/2055 lost during a query, 1040 too many connections.
# All of them are worth a retry later, which is what a 503 tells the caller. 2026: TLS failed (a
# server without TLS under HANDPIPE_DB_TLS=required, a certificate that does not verify): no answer either.
_MYSQL_UNAVAILABLE_CODES = frozenset({1040, 2002, 2003, 2005, 2006, 2013, 2026, 2055})


# A dead peer would otherwise block a Lambda until its own timeout; none of our statements is slow.
_MYSQL_IO_TIMEOUT_S = 60


# Strict mode makes MySQL refuse a value that does not fit instead of storing a truncated one.
_MYSQL_SQL_MODE = "STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class DatabaseError(Exception):
    """Base of the errors this module raises in place of the drivers' own."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or the connection was lost; retrying later may succeed."""


# MySQL's ER_CHECK_CONSTRAINT_VIOLATED and MariaDB's ER_CONSTRAINT_FAILED, which pymysql raises as
# OperationalError (migration 5 checks jobs.status).
_CHECK_VIOLATIONS = (3819, 4025)


class IntegrityError(DatabaseError):
    """A unique, primary-key or foreign-key constraint rejected a write."""


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


@lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """`?` placeholders become pymysql's `%s`; `?` inside quoted literals stays. Every `%` is doubled,
    literals included, because pymysql %-formats the whole statement (we always pass a tuple)."""
    out: list[str] = []
    quote: str | None = None
    escaped = False
    for char in sql:
        if char == "%":
            out.append("%%")
        elif quote is not None:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


def redacted_url(url: str) -> str:
    """The URL with its password masked, for logs and messages (the CLI prints it too)."""
    # Up to the last "@": an unencoded "@" in a password must not leave its tail in a log line.
    return re.sub(r"(://[^:/@]*):.*@", r"\1:***@", url)


def _bad_url(url: str, problem: str = "") -> ValueError:
    detail = f" ({problem})" if problem else ""
    return ValueError(f"unsupported database URL {redacted_url(url)!r}{detail}: expected {_URL_FORMS}")


TLS_MODES = ("preferred", "required", "verify", "disabled")


def _mysql_tls(mode: str, ca_file: str | None) -> dict[str, Any]:
    """pymysql's TLS settings for a mode. preferred: TLS whenever the server offers it (RDS always
    does), unverified; required: refuse a server without TLS; verify: also check the certificate
    against `ca_file` (the RDS CA bundle, say; the system's CAs without one) and the host name."""
    if mode not in TLS_MODES:
        raise ValueError(f"the database TLS mode must be one of {', '.join(TLS_MODES)}, got {mode!r}")
    if mode == "disabled":
        return {"ssl_disabled": True}
    if mode == "preferred":
        return {}  # pymysql's own default: TLS when offered, plain otherwise
    if mode == "required":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return {"ssl": context}  # a context makes pymysql refuse a server that offers no TLS
    return {"ssl": ssl.create_default_context(cafile=ca_file)}  # verify: certificate and host name


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True  # pymysql's way of saying the socket is already gone
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in _MYSQL_UNAVAILABLE_CODES
    if isinstance(exc, sqlite3.OperationalError):
        return "unable to open" in str(exc)
    return False


class Database:
    """One lazily opened connection. Statements run under a re-entrant lock because the local stack
    shares one Database between threads; outside `transaction()` each statement is its own one."""

    def __init__(self, dialect: Dialect, connect: Callable[[], Any], *, label: str) -> None:
        self._dialect: Dialect = dialect
        self._connect = connect
        self._label = label
        self._conn: Any = None
        self._lock = threading.RLock()
        self._depth = 0

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, tls: str = "preferred", ca_file: str | None = None) -> Database:  # noqa: C901 - one branch per URL form, each a clear error
        if not isinstance(url, str):
            raise ValueError(f"a database URL must be a string, got {type(url).__name__}: expected {_URL_FORMS}")
        if url.startswith("sqlite:"):
            prefix = "sqlite:///"
            path = url[len(prefix) :] if url.startswith(prefix) else ""
            if not path:
                raise _bad_url(url, "no path")
            if "?" in path or "#" in path:
                raise _bad_url(url, "query strings are not supported")
            return cls.for_sqlite(path)
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mysql+pymysql"):
            raise _bad_url(url, f"unknown scheme {parts.scheme!r}" if parts.scheme else "no scheme")
        try:
            port = parts.port
        except ValueError:
            raise _bad_url(url, "the port is not a number between 0 and 65535") from None
        database = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not parts.hostname:
            raise _bad_url(url, "no host")
        if not parts.username:
            raise _bad_url(url, "no user")
        if not database or "/" in database:
            raise _bad_url(url, "no database name")
        if parts.query or parts.fragment:
            raise _bad_url(url, "query strings are not supported")
        return cls.for_mysql(
            host=parts.hostname,
            port=port or 3306,
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            database=database,
            tls=tls,
            ca_file=ca_file,
        )

    @classmethod
    def for_sqlite(cls, path: str) -> Database:
        def connect() -> sqlite3.Connection:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of the module guessing.
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            try:
                conn.row_factory = _dict_row
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA foreign_keys = ON")
                if path != ":memory:":
                    # Readers then never wait for the writer: the local stack reads while workers write.
                    conn.execute("PRAGMA journal_mode = WAL")
            except BaseException:
                conn.close()
                raise
            return conn

        return cls("sqlite", connect, label=f"sqlite:///{path}")

    @classmethod
    def for_mysql(
        cls,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        *,
        tls: str = "preferred",
        ca_file: str | None = None,
    ) -> Database:
        tls_options = _mysql_tls(tls, ca_file)

        def connect() -> Any:
            return pymysql.connect(
                **tls_options,
                host=host,
                port=int(port),
                user=user,
                password=password,
                database=database,
                charset="utf8mb4",
                cursorclass=pymysql.cursors.DictCursor,
                autocommit=False,
                connect_timeout=5,
                read_timeout=_MYSQL_IO_TIMEOUT_S,
                write_timeout=_MYSQL_IO_TIMEOUT_S,
                # Report matched rather than changed rows, as SQLite does, so a conditional UPDATE
                # that writes identical values still counts as having found its row.
                client_flag=CLIENT.FOUND_ROWS,
                sql_mode=_MYSQL_SQL_MODE,
            )

        return cls("mysql", connect, label=f"mysql://{user}@{host}:{port}/{database}")

    def __repr__(self) -> str:
        return f"Database({self._label!r})"

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    # -- connection -----------------------------------------------------------------------------

    @contextmanager
    def _driver_errors(self) -> Iterator[None]:
        try:
            yield
        except (pymysql.err.IntegrityError, sqlite3.IntegrityError) as exc:
            raise IntegrityError(str(exc)) from exc
        except (pymysql.err.Error, sqlite3.Error) as exc:
            if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in _CHECK_VIOLATIONS:
                raise IntegrityError(str(exc)) from exc  # a CHECK constraint: an integrity error too
            if not _is_unavailable(exc):
                raise
            # The next use starts from a fresh connection instead of a half-dead one.
            self._discard_connection()
            raise DatabaseUnavailable(f"database {self._label} is unavailable: {exc}") from exc

    def _connection(self) -> Any:
        if self._conn is None:
            with self._driver_errors():
                self._conn = self._connect()
        return self._conn

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except (pymysql.err.Error, sqlite3.Error):
                pass  # it is being thrown away because it is broken

    def _fresh_connection(self) -> Any:
        """The connection, checked to be alive: a Lambda container may have slept for longer than the
        server keeps idle sessions. (pymysql deprecates ping(reconnect=True); this does the same.)"""
        conn = self._connection()
        if self._dialect == "mysql":
            try:
                conn.ping(reconnect=False)
            except pymysql.err.Error:
                self._discard_connection()
                conn = self._connection()
        return conn

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers; for health checks."""
        with self._lock:
            if self._depth:
                conn = self._connection()  # a reconnect would silently drop the open transaction
            else:
                conn = self._fresh_connection()
            with self._driver_errors():
                if self._dialect == "mysql":
                    conn.ping(reconnect=False)
                else:
                    conn.execute("SELECT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._discard_connection()

    # -- transactions ---------------------------------------------------------------------------

    def _in_transaction(self) -> Any:
        """The connection of the open transaction, unless an earlier statement lost it."""
        if self._conn is None:
            raise DatabaseUnavailable(f"database {self._label}: the connection was lost during this transaction")
        return self._conn

    def _raw(self, sql: str) -> None:
        conn = self._in_transaction()
        with self._driver_errors():
            if self._dialect == "sqlite":
                conn.execute(sql)
            else:
                with conn.cursor() as cursor:
                    cursor.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Commit when the block ends, roll back when it raises. Nested blocks become savepoints, so
        an inner failure that is caught leaves the outer work intact."""
        with self._lock:
            if self._depth:
                with self._savepoint():
                    yield self
                return
            conn = self._fresh_connection()
            if self._dialect == "sqlite":
                # IMMEDIATE takes the write lock up front: a deferred transaction that later tries to
                # write can fail with SQLITE_BUSY without waiting for busy_timeout.
                self._raw("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
                with self._driver_errors():
                    if self._dialect == "sqlite":
                        conn.execute("COMMIT")
                    else:
                        conn.commit()
            except BaseException:
                self._rollback_quietly()
                raise
            finally:
                self._depth = 0

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self._dialect == "sqlite":
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
        except (pymysql.err.Error, sqlite3.Error):
            # The error that got us here is the one worth reporting; a broken connection is dropped.
            self._discard_connection()

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        name = f"handpipe_sp{self._depth}"
        self._raw(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            try:
                self._raw(f"ROLLBACK TO SAVEPOINT {name}")
                self._raw(f"RELEASE SAVEPOINT {name}")
            except DatabaseError:
                pass  # the outer transaction's rollback still undoes everything
            raise
        else:
            self._depth -= 1
            self._raw(f"RELEASE SAVEPOINT {name}")

    # -- statements -----------------------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any], read: Callable[[Any], _T], *, writes: bool) -> _T:
        values = tuple(params)
        with self._lock:
            if self._depth:
                # No savepoint per statement: a failing statement is undone on its own in both
                # dialects, and MySQL DDL (which commits implicitly) would destroy the savepoint.
                return self._statement(self._in_transaction(), sql, values, read)
            if not writes and self._dialect == "sqlite":
                # A lone SELECT is atomic in autocommit mode and needs no write lock.
                return self._statement(self._connection(), sql, values, read)
            # For MySQL even a read needs a commit: with autocommit off it would otherwise keep its
            # snapshot open and later reads would not see other connections' writes.
            with self.transaction():
                return self._statement(self._in_transaction(), sql, values, read)

    def _statement(self, conn: Any, sql: str, values: tuple[Any, ...], read: Callable[[Any], _T]) -> _T:
        with self._driver_errors():
            if self._dialect == "sqlite":
                cursor = conn.execute(sql, values)
                try:
                    return read(cursor)
                finally:
                    cursor.close()
            with conn.cursor() as cursor:
                cursor.execute(_to_pyformat(sql), values)
                return read(cursor)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it matched (MySQL too: see FOUND_ROWS above)."""
        return self._run(sql, params, lambda cursor: int(cursor.rowcount), writes=True)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._run(sql, params, lambda cursor: cursor.fetchone(), writes=False)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(sql, params, lambda cursor: list(cursor.fetchall()), writes=False)
