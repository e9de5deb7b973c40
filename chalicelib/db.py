"""The metadata database: one connection wrapper that speaks SQLite (local stack, tests) and MySQL
(AWS) with the same SQL, and the repositories that read and write videos, jobs and segments."""

from __future__ import annotations

import builtins
import json
import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal, TypedDict, TypeVar, Unpack
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

Dialect = Literal["sqlite", "mysql"]
Row = dict[str, Any]
_T = TypeVar("_T")

SEGMENT_PENDING = "PENDING"
SEGMENT_SUCCEEDED = "SUCCEEDED"
SEGMENT_FAILED = "FAILED"
SEGMENT_STATUSES = (SEGMENT_PENDING, SEGMENT_SUCCEEDED, SEGMENT_FAILED)
ACTIVE_JOB_STATUSES = ("QUEUED", "IN_PROGRESS")
VIDEO_DELETING = "DELETING"  # a video on its way out: it takes no new job
MAX_PAGE_SIZE = 1000

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
    def from_url(cls, url: str, *, tls: str = "preferred", ca_file: str | None = None) -> Database:
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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    id: str
    title: str
    filename: str
    content_type: str
    s3_key: str
    status: str
    created_at: int
    updated_at: int
    size_bytes: int | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Job:
    id: str
    video_id: str
    status: str
    options: dict[str, Any]
    created_at: int
    updated_at: int
    client_token: str | None = None
    tag: str | None = None
    owner: str | None = None
    error: str | None = None
    error_code: str | None = None
    segments_total: int = 0
    segments_done: int = 0
    frames_total: int | None = None
    frames_done: int = 0
    frames_with_hands: int = 0
    result_key: str | None = None
    summary: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None


@dataclass(frozen=True)
class Segment:
    job_id: str
    segment_index: int
    part_key: str
    updated_at: int
    status: str = SEGMENT_PENDING
    start_ms: int | None = None
    end_ms: int | None = None
    frames_processed: int = 0
    frames_with_hands: int = 0
    error: str | None = None
    dispatched_at: int | None = None  # when its work item was sent; None while it waits for capacity
    dispatch_count: int = 0  # work items sent for it; more than one when a lost one was sent again


class JobRefused(Exception):
    """`JobRepository.create_for_video` would not add the job: the video is `missing`, `deleting`,
    or `busy` with `active` jobs already."""

    def __init__(self, reason: Literal["missing", "deleting", "busy"], active: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.active = active


class JobFields(TypedDict, total=False):
    """What `JobRepository.transition` may set besides the status."""

    error: str | None
    error_code: str | None
    segments_total: int
    frames_total: int | None
    result_key: str | None
    summary: dict[str, Any] | None
    video_metadata: dict[str, Any] | None
    started_at: int | None
    finished_at: int | None


_TRANSITION_COLUMNS = {
    "error": "error",
    "error_code": "error_code",
    "segments_total": "segments_total",
    "frames_total": "frames_total",
    "result_key": "result_key",
    "summary": "summary_json",
    "video_metadata": "video_json",
    "started_at": "started_at",
    "finished_at": "finished_at",
}

# VARCHAR limits from the schema. Checked here so both dialects reject the same values, with a
# message naming the field, instead of MySQL failing and SQLite storing whatever it is given.
_VIDEO_LIMITS = {
    "id": 40,
    "title": 200,
    "filename": 255,
    "content_type": 100,
    "s3_key": 512,
    "status": 20,
    "owner": 255,
}
_JOB_LIMITS = {
    "id": 40,
    "video_id": 40,
    "status": 20,
    "client_token": 64,
    "tag": 128,
    "owner": 255,
    "error_code": 64,
    "result_key": 512,
}
_SEGMENT_LIMITS = {"job_id": 40, "status": 20, "part_key": 512}


def _check_lengths(kind: str, values: Mapping[str, Any], limits: Mapping[str, int]) -> None:
    too_long = [
        f"{name} has {len(values[name])} characters (at most {limit})"
        for name, limit in limits.items()
        if isinstance(values.get(name), str) and len(values[name]) > limit
    ]
    if too_long:
        raise ValueError(f"{kind} field too long: {'; '.join(too_long)}")


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _statuses(values: Collection[str], name: str) -> list[str]:
    # A bare string is a Collection[str] too, and would silently become its letters.
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of statuses, not the string {values!r}")
    return list(values)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, got {limit!r}")


def _after(after: tuple[int, str] | None, conditions: list[str], params: list[Any]) -> None:
    """Keyset pagination on (created_at, id), newest first: rows strictly after the given one."""
    if after is None:
        return
    created_at, last_id = after
    # Spelled out rather than as a row comparison, which MySQL does not always serve from an index.
    conditions.append("(created_at < ? OR (created_at = ? AND id < ?))")
    params.extend([created_at, created_at, last_id])


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------

_VIDEO_COLUMNS = (
    "id, title, filename, content_type, size_bytes, s3_key, status, owner, metadata_json, created_at, updated_at"
)


def _video(row: Row) -> Video:
    return Video(
        id=row["id"],
        title=row["title"],
        filename=row["filename"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        s3_key=row["s3_key"],
        status=row["status"],
        owner=row["owner"],
        metadata=_loads(row["metadata_json"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class VideoRepository:
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def add(self, video: Video) -> None:
        _check_lengths("video", vars(video), _VIDEO_LIMITS)
        self._db.execute(
            f"INSERT INTO videos ({_VIDEO_COLUMNS}) VALUES ({_marks(11)})",
            (
                video.id,
                video.title,
                video.filename,
                video.content_type,
                video.size_bytes,
                video.s3_key,
                video.status,
                video.owner,
                _dumps(video.metadata),
                video.created_at,
                video.updated_at,
            ),
        )

    def get(self, video_id: str, owner: str | None = None) -> Video | None:
        conditions, params = ["id = ?"], [video_id]
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos{_where(conditions)}", params)
        return None if row is None else _video(row)

    def find_by_key(self, s3_key: str) -> Video | None:
        """The video registered for this object key, if any (one video per key)."""
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE s3_key = ?", (s3_key,))
        return None if row is None else _video(row)

    def set_status(self, video_id: str, status: str, *, expected: Collection[str] | None = None) -> bool:
        """Set the status, only from one of `expected` when given; True when the video was updated."""
        _check_lengths("video", {"status": status}, _VIDEO_LIMITS)
        sql = "UPDATE videos SET status = ?, updated_at = ? WHERE id = ?"
        params: list[Any] = [status, self._clock(), video_id]
        if expected is not None:
            allowed = _statuses(expected, "expected")
            if not allowed:
                return False
            sql += f" AND status IN ({_marks(len(allowed))})"
            params.extend(allowed)
        return self._db.execute(sql, params) > 0

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE videos SET metadata_json = ?, updated_at = ? WHERE id = ?",
            (_dumps(metadata), self._clock(), video_id),
        )

    def lock(self, video_id: str) -> Video | None:
        """The video, its row locked until the caller's transaction ends (MySQL; SQLite's BEGIN
        IMMEDIATE already lets one writer in at a time). Whatever changes a video and its jobs
        together locks the video first, then the jobs, then the segments, so none can deadlock."""
        lock = " FOR UPDATE" if self._db.dialect == "mysql" else ""
        row = self._db.fetchone(f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE id = ?{lock}", (video_id,))
        return None if row is None else _video(row)

    def begin_delete(self, video_id: str) -> int | None:
        """Mark the video DELETING unless it has active jobs, in one transaction with the check, so
        no job can be created between the two (`JobRepository.create_for_video` locks the same row).
        None when there is no such video; otherwise the number of active jobs (0: it is marked)."""
        with self._db.transaction():
            if self.lock(video_id) is None:
                return None
            share = " LOCK IN SHARE MODE" if self._db.dialect == "mysql" else ""
            row = self._db.fetchone(
                f"SELECT COUNT(*) AS n FROM jobs WHERE video_id = ? AND status IN ({_marks(len(ACTIVE_JOB_STATUSES))})"
                f"{share}",
                (video_id, *ACTIVE_JOB_STATUSES),
            )
            active = int(row["n"]) if row else 0
            if not active:
                self._db.execute(
                    "UPDATE videos SET status = ?, updated_at = ? WHERE id = ?",
                    (VIDEO_DELETING, self._clock(), video_id),
                )
            return active

    def delete(self, video_id: str) -> bool:
        """Remove the video with its jobs and their segments; False when there was no such video."""
        with self._db.transaction():
            if self._db.dialect == "mysql":
                # The video, then its jobs: the order every writer of both takes them in.
                self.lock(video_id)
                self._db.fetchall("SELECT id FROM jobs WHERE video_id = ? FOR UPDATE", (video_id,))
            self._db.execute(
                "DELETE FROM segments WHERE job_id IN (SELECT id FROM jobs WHERE video_id = ?)", (video_id,)
            )
            self._db.execute("DELETE FROM jobs WHERE video_id = ?", (video_id,))
            return self._db.execute("DELETE FROM videos WHERE id = ?", (video_id,)) > 0

    def list(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: tuple[int, str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Video]:
        """Newest first. For the next page pass `after=(last.created_at, last.id)` of this one."""
        _check_limit(limit)
        conditions: builtins.list[str] = []
        params: builtins.list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        _after(after, conditions, params)
        rows = self._db.fetchall(
            f"SELECT {_VIDEO_COLUMNS} FROM videos{_where(conditions)} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_video(row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Jobs and their segments
# ---------------------------------------------------------------------------------------------

_JOB_COLUMNS = (
    "id, video_id, status, options_json, client_token, tag, owner, error, error_code, segments_total, "
    "segments_done, frames_total, frames_done, frames_with_hands, result_key, summary_json, video_json, "
    "created_at, started_at, finished_at, updated_at"
)
_SEGMENT_COLUMNS = (
    "job_id, segment_index, start_ms, end_ms, status, part_key, frames_processed, frames_with_hands, error, updated_at"
)


def _job(row: Row) -> Job:
    return Job(
        id=row["id"],
        video_id=row["video_id"],
        status=row["status"],
        options=_loads(row["options_json"]) or {},
        client_token=row["client_token"],
        tag=row["tag"],
        owner=row["owner"],
        error=row["error"],
        error_code=row["error_code"],
        segments_total=row["segments_total"],
        segments_done=row["segments_done"],
        frames_total=row["frames_total"],
        frames_done=row["frames_done"],
        frames_with_hands=row["frames_with_hands"],
        result_key=row["result_key"],
        summary=_loads(row["summary_json"]),
        video_metadata=_loads(row["video_json"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
    )


def _segment(row: Row) -> Segment:
    return Segment(
        job_id=row["job_id"],
        segment_index=row["segment_index"],
        start_ms=row["start_ms"],
        end_ms=row["end_ms"],
        status=row["status"],
        part_key=row["part_key"],
        frames_processed=row["frames_processed"],
        frames_with_hands=row["frames_with_hands"],
        error=row["error"],
        updated_at=row["updated_at"],
        dispatched_at=row["dispatched_at"],
        dispatch_count=row["dispatch_count"],
    )


class JobRepository:
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert the job, or return (the job already made with its client_token, False): the unique
        index decides, so two concurrent requests with one token still make one job."""
        _check_lengths("job", vars(job), _JOB_LIMITS)
        try:
            self._db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_marks(21)})",
                (
                    job.id,
                    job.video_id,
                    job.status,
                    _dumps(job.options),
                    job.client_token,
                    job.tag,
                    job.owner,
                    job.error,
                    job.error_code,
                    job.segments_total,
                    job.segments_done,
                    job.frames_total,
                    job.frames_done,
                    job.frames_with_hands,
                    job.result_key,
                    _dumps(job.summary),
                    _dumps(job.video_metadata),
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.updated_at,
                ),
            )
        except IntegrityError:
            existing = None if job.client_token is None else self.find_by_client_token(job.video_id, job.client_token)
            if existing is None:
                raise  # not the token: a reused id or a missing video
            return existing, False
        return job, True

    def find_by_client_token(self, video_id: str, client_token: str) -> Job | None:
        # A locking read sees the committed winner even inside a caller's older MySQL snapshot.
        lock = " LOCK IN SHARE MODE" if self._db.dialect == "mysql" else ""
        row = self._db.fetchone(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE video_id = ? AND client_token = ?{lock}", (video_id, client_token)
        )
        return None if row is None else _job(row)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        conditions, params = ["id = ?"], [job_id]
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        row = self._db.fetchone(f"SELECT {_JOB_COLUMNS} FROM jobs{_where(conditions)}", params)
        return None if row is None else _job(row)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around several calls (of this and of a VideoRepository on the same database)."""
        with self._db.transaction():
            yield

    def create_for_video(self, job: Job, *, max_active: int) -> tuple[Job, bool]:
        """`create`, checked in one transaction with the video: refused (JobRefused) when the video is
        missing or being deleted, or already has `max_active` active jobs. The video's row is locked
        first, so a concurrent `VideoRepository.begin_delete` either sees this job or is seen by it."""
        with self._db.transaction():
            row = self._db.fetchone(
                "SELECT status FROM videos WHERE id = ?" + (" FOR UPDATE" if self._db.dialect == "mysql" else ""),
                (job.video_id,),
            )
            if row is None:
                raise JobRefused("missing")
            if row["status"] == VIDEO_DELETING:
                raise JobRefused("deleting")
            if job.client_token is not None:
                existing = self.find_by_client_token(job.video_id, job.client_token)
                if existing is not None:
                    return existing, False
            active = self.count_active_for_video(job.video_id)
            if active >= max_active:
                raise JobRefused("busy", active)
            return self.create(job)

    def delete(self, job_id: str) -> bool:
        """Remove the job and its segments (a job that could not be queued); False when there was none."""
        with self._db.transaction():
            self._lock_job(job_id)
            self._db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)) > 0

    def list_for_video(self, video_id: str, *, limit: int = 50, after: tuple[int, str] | None = None) -> list[Job]:
        """Newest first; keyset pages like VideoRepository.list."""
        _check_limit(limit)
        conditions, params = ["video_id = ?"], [video_id]
        _after(after, conditions, params)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs{_where(conditions)} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_job(row) for row in rows]

    def ids_with_status(self, status: str, *, limit: int = 100, after_id: str = "") -> list[str]:
        """Ids of jobs in `status`, in id order (ids sort by creation time), after `after_id`: how a
        restarted local stack finds the work it must send again."""
        _check_limit(limit)
        rows = self._db.fetchall(
            "SELECT id FROM jobs WHERE status = ? AND id > ? ORDER BY id LIMIT ?", (status, after_id, limit)
        )
        return [row["id"] for row in rows]

    def count_active_for_video(self, video_id: str) -> int:
        row = self._db.fetchone(
            f"SELECT COUNT(*) AS n FROM jobs WHERE video_id = ? AND status IN ({_marks(len(ACTIVE_JOB_STATUSES))})",
            (video_id, *ACTIVE_JOB_STATUSES),
        )
        return int(row["n"]) if row else 0

    def transition(
        self, job_id: str, *, from_statuses: Collection[str], to_status: str, **fields: Unpack[JobFields]
    ) -> bool:
        """Move the job to `to_status` only if it is in one of `from_statuses`, setting `fields` with
        it; True when it moved. Concurrent callers cannot both win the same transition."""
        unknown = sorted(set(fields) - set(_TRANSITION_COLUMNS))
        if unknown:
            raise TypeError(f"transition() cannot set {', '.join(unknown)} (allowed: {', '.join(_TRANSITION_COLUMNS)})")
        allowed = _statuses(from_statuses, "from_statuses")
        if not allowed:
            return False
        _check_lengths("job", {"status": to_status, **fields}, _JOB_LIMITS)
        assignments = ["status = ?", "updated_at = ?"]
        params: list[Any] = [to_status, self._clock()]
        for name, value in fields.items():
            stored: Any = value
            if name in ("summary", "video_metadata"):
                stored = _dumps(stored)
            assignments.append(f"{_TRANSITION_COLUMNS[name]} = ?")
            params.append(stored)
        params.append(job_id)
        params.extend(allowed)
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ? AND status IN ({_marks(len(allowed))})"
        return self._db.execute(sql, params) > 0

    def stuck(self, *, status: str, updated_before_ms: int, limit: int = 100) -> list[Job]:
        """Jobs in `status` not touched since `updated_before_ms`, least recently touched first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND updated_at < ? ORDER BY updated_at, id LIMIT ?",
            (status, updated_before_ms, limit),
        )
        return [_job(row) for row in rows]

    # -- segments -------------------------------------------------------------------------------

    def _lock_job(self, job_id: str) -> None:
        # Every segment write locks its job row first. Without that, two MySQL transactions each
        # holding one segment would wait for each other in the totals subquery and deadlock.
        # SQLite needs nothing: BEGIN IMMEDIATE already lets one writer in at a time.
        if self._db.dialect == "mysql":
            self._db.fetchone("SELECT id FROM jobs WHERE id = ? FOR UPDATE", (job_id,))

    def _refresh_totals(self, job_id: str) -> None:
        # Recomputed from the segments rather than incremented, so progress and completion events
        # can arrive in any order, or twice, without counting anything twice.
        self._db.execute(
            "UPDATE jobs SET"
            " segments_done = (SELECT COUNT(*) FROM segments WHERE job_id = ? AND status = ?),"
            " frames_done = (SELECT COALESCE(SUM(frames_processed), 0) FROM segments WHERE job_id = ?),"
            " frames_with_hands = (SELECT COALESCE(SUM(frames_with_hands), 0) FROM segments WHERE job_id = ?),"
            " updated_at = ?"
            " WHERE id = ?",
            (job_id, SEGMENT_SUCCEEDED, job_id, job_id, self._clock(), job_id),
        )

    def add_segments(self, job_id: str, segments: Sequence[Segment]) -> None:
        """Insert the segments; ones whose index already exists are left as they are, so a
        redelivered orchestration message is harmless."""
        for segment in segments:
            if segment.job_id != job_id:
                raise ValueError(f"segment {segment.segment_index} belongs to job {segment.job_id}, not {job_id}")
            if segment.status not in SEGMENT_STATUSES:
                raise ValueError(f"segment status must be one of {', '.join(SEGMENT_STATUSES)}, got {segment.status!r}")
            _check_lengths("segment", vars(segment), _SEGMENT_LIMITS)
        if self._db.dialect == "mysql":
            # Not INSERT IGNORE: that would also turn a missing job (a foreign-key error) into a warning.
            on_conflict = " ON DUPLICATE KEY UPDATE job_id = job_id"
        else:
            on_conflict = " ON CONFLICT (job_id, segment_index) DO NOTHING"
        sql = f"INSERT INTO segments ({_SEGMENT_COLUMNS}) VALUES ({_marks(10)}){on_conflict}"
        with self._db.transaction():
            self._lock_job(job_id)
            for segment in segments:
                self._db.execute(
                    sql,
                    (
                        segment.job_id,
                        segment.segment_index,
                        segment.start_ms,
                        segment.end_ms,
                        segment.status,
                        segment.part_key,
                        segment.frames_processed,
                        segment.frames_with_hands,
                        segment.error,
                        segment.updated_at,
                    ),
                )

    def segments(self, job_id: str) -> list[Segment]:
        rows = self._db.fetchall(
            f"SELECT {_SEGMENT_COLUMNS}, dispatched_at, dispatch_count FROM segments WHERE job_id = ?"
            " ORDER BY segment_index",
            (job_id,),
        )
        return [_segment(row) for row in rows]

    def in_flight(self, job_id: str | None = None) -> int:
        """Segments sent to workers and not finished, of active jobs: of one job, or of all jobs. A
        job that ends, for whatever reason, gives its slots back in the same statement that ends it."""
        sql = (
            "SELECT COUNT(*) AS n FROM segments s JOIN jobs j ON j.id = s.job_id"
            f" WHERE s.status = ? AND s.dispatched_at IS NOT NULL AND j.status IN ({_marks(len(ACTIVE_JOB_STATUSES))})"
        )
        params: tuple[Any, ...] = (SEGMENT_PENDING, *ACTIVE_JOB_STATUSES)
        if job_id is not None:
            sql += " AND s.job_id = ?"
            params += (job_id,)
        row = self._db.fetchone(sql, params)
        return int(row["n"]) if row else 0

    def claim_for_dispatch(self, job_id: str, limit: int) -> list[Segment]:
        """Mark up to `limit` of the job's waiting segments as sent and return them, lowest index
        first. Each claim is conditional, so two dispatchers never send the same segment."""
        if limit <= 0:
            return []
        claimed: list[Segment] = []
        with self._db.transaction():
            self._lock_job(job_id)
            job = self._db.fetchone("SELECT status FROM jobs WHERE id = ?", (job_id,))
            if job is None or job["status"] != "IN_PROGRESS":
                return []  # an ended job's segments are never sent
            rows = self._db.fetchall(
                f"SELECT {_SEGMENT_COLUMNS}, dispatched_at, dispatch_count FROM segments"
                " WHERE job_id = ? AND status = ? AND dispatched_at IS NULL ORDER BY segment_index LIMIT ?",
                (job_id, SEGMENT_PENDING, limit),
            )
            now = self._clock()
            for row in rows:
                if self._db.execute(
                    "UPDATE segments SET dispatched_at = ?, dispatch_count = dispatch_count + 1"
                    " WHERE job_id = ? AND segment_index = ? AND dispatched_at IS NULL",
                    (now, job_id, row["segment_index"]),
                ):
                    claimed.append(replace(_segment(row), dispatched_at=now, dispatch_count=row["dispatch_count"] + 1))
        return claimed

    def claim_within_caps(self, job_id: str, *, per_job: int, total: int, at_most: int | None = None) -> list[Segment]:
        """`claim_for_dispatch` for as many segments as the caps leave free (`per_job` in flight for
        this job, `total` for all jobs, and at most `at_most`: an owner's share of a round), counted in
        the claim's own transaction while other dispatchers wait, so concurrent dispatchers together
        never exceed the caps."""
        with self._dispatchers_apart(), self._db.transaction():
            capacity = min(per_job - self.in_flight(job_id), total - self.in_flight())
            if at_most is not None:
                capacity = min(capacity, at_most)
            return self.claim_for_dispatch(job_id, capacity)

    @contextmanager
    def _dispatchers_apart(self) -> Iterator[None]:
        # SQLite's BEGIN IMMEDIATE already admits one writer at a time. MySQL's row locks would not
        # keep two jobs' dispatchers apart, so they take a named lock around their transactions.
        if self._db.dialect != "mysql":
            yield
            return
        name = "LEFT(CONCAT('handpipe_dispatch:', DATABASE()), 64)"
        row = self._db.fetchone(f"SELECT GET_LOCK({name}, 10) AS got")
        if not row or row["got"] != 1:
            raise DatabaseUnavailable("another dispatcher has held the dispatch lock for 10 s")
        try:
            yield
        finally:
            self._db.fetchone(f"SELECT RELEASE_LOCK({name}) AS released")

    def release_claim(self, job_id: str, index: int) -> None:
        """Undo a claim whose work item could not be sent, so a later dispatch sends it."""
        self._db.execute(
            "UPDATE segments SET dispatched_at = NULL, dispatch_count = dispatch_count - 1"
            " WHERE job_id = ? AND segment_index = ? AND status = ? AND dispatched_at IS NOT NULL",
            (job_id, index, SEGMENT_PENDING),
        )

    def silent_segments(self, *, since_ms: int, limit: int = 100) -> list[Segment]:
        """Segments of running jobs sent to a worker and not heard of (sent, progress, finished)
        since `since_ms`: their work item was lost or ended in the dead-letter queue. Oldest first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {', '.join('s.' + c.strip() for c in _SEGMENT_COLUMNS.split(','))}, s.dispatched_at,"
            " s.dispatch_count FROM segments s JOIN jobs j ON j.id = s.job_id"
            " WHERE s.status = ? AND s.dispatched_at IS NOT NULL AND s.dispatched_at < ? AND s.updated_at < ?"
            " AND j.status = ? ORDER BY s.dispatched_at, s.job_id, s.segment_index LIMIT ?",
            (SEGMENT_PENDING, since_ms, since_ms, "IN_PROGRESS", limit),
        )
        return [_segment(row) for row in rows]

    def requeue_segment(self, job_id: str, index: int, *, dispatched_at: int) -> bool:
        """Give a lost segment back to the dispatcher (keeping its dispatch_count), only if it is still
        the claim that was judged lost; True when it was given back."""
        return (
            self._db.execute(
                "UPDATE segments SET dispatched_at = NULL, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ? AND dispatched_at = ?",
                (self._clock(), job_id, index, SEGMENT_PENDING, dispatched_at),
            )
            > 0
        )

    def finished_unmerged(self, *, updated_before_ms: int, limit: int = 100) -> list[str]:
        """Running jobs whose segments have all succeeded, untouched since `updated_before_ms`: the
        event that should have merged them was lost or failed."""
        _check_limit(limit)
        rows = self._db.fetchall(
            "SELECT id FROM jobs WHERE status = ? AND updated_at < ? AND segments_total > 0"
            " AND segments_done = segments_total ORDER BY updated_at, id LIMIT ?",
            ("IN_PROGRESS", updated_before_ms, limit),
        )
        return [row["id"] for row in rows]

    def queued_before(self, *, created_before_ms: int, limit: int = 100) -> list[Job]:
        """QUEUED jobs created before `created_before_ms`, oldest first."""
        _check_limit(limit)
        rows = self._db.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND created_at < ? ORDER BY created_at, id LIMIT ?",
            ("QUEUED", created_before_ms, limit),
        )
        return [_job(row) for row in rows]

    def jobs_waiting_for_dispatch(self, limit: int = 50) -> list[tuple[str, str | None]]:
        """Running jobs (id, owner) with segments not yet sent, in the order they get freed capacity: round robin
        across owners (every owner's oldest waiting job, then every owner's second, ...), and within a
        round the owner with the fewest segments on workers first. One owner's flood of jobs then
        delays another owner's job by one round, not by the whole flood."""
        _check_limit(limit)
        # COALESCE: jobs of no owner (an unscoped stack) are one owner, and NULL would never join.
        rows = self._db.fetchall(
            "SELECT w.id AS id, w.owner AS owner FROM ("
            " SELECT j.id, j.owner, j.created_at, COALESCE(j.owner, '') AS who,"
            " ROW_NUMBER() OVER (PARTITION BY COALESCE(j.owner, '') ORDER BY j.created_at, j.id) AS turn"
            " FROM jobs j WHERE j.status = ? AND EXISTS (SELECT 1 FROM segments s"
            " WHERE s.job_id = j.id AND s.status = ? AND s.dispatched_at IS NULL)) w"
            " LEFT JOIN (SELECT COALESCE(f.owner, '') AS who, COUNT(*) AS n FROM segments s"
            " JOIN jobs f ON f.id = s.job_id WHERE s.status = ? AND s.dispatched_at IS NOT NULL"
            " AND f.status = ?"  # only running jobs hold slots (as in in_flight)
            " GROUP BY COALESCE(f.owner, '')) busy ON busy.who = w.who"
            " ORDER BY w.turn, COALESCE(busy.n, 0), w.created_at, w.id LIMIT ?",
            ("IN_PROGRESS", SEGMENT_PENDING, SEGMENT_PENDING, "IN_PROGRESS", limit),
        )
        return [(row["id"], row["owner"]) for row in rows]

    def complete_segment(self, job_id: str, index: int, *, frames_processed: int, frames_with_hands: int) -> bool:
        """Mark a pending segment SUCCEEDED with its final counts and update the job's totals, in one
        transaction. True only for the event that completed it; a redelivery changes nothing."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET status = ?, frames_processed = ?, frames_with_hands = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ?",
                (SEGMENT_SUCCEEDED, frames_processed, frames_with_hands, self._clock(), job_id, index, SEGMENT_PENDING),
            )
            if changed:
                self._refresh_totals(job_id)
        return changed > 0

    def fail_segment(self, job_id: str, index: int, *, error: str) -> bool:
        """Mark a pending segment FAILED; True only for the event that failed it."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET status = ?, error = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ?",
                (SEGMENT_FAILED, error, self._clock(), job_id, index, SEGMENT_PENDING),
            )
        return changed > 0

    def record_progress(self, job_id: str, index: int, frames_processed: int) -> bool:
        """Raise a pending segment's frame count (never lower it: progress events may arrive out of
        order) and the job's frames_done with it. True when something changed."""
        with self._db.transaction():
            self._lock_job(job_id)
            changed = self._db.execute(
                "UPDATE segments SET frames_processed = ?, updated_at = ?"
                " WHERE job_id = ? AND segment_index = ? AND status = ? AND frames_processed < ?",
                (frames_processed, self._clock(), job_id, index, SEGMENT_PENDING, frames_processed),
            )
            if changed:
                self._refresh_totals(job_id)
            else:
                # Still news that a worker is on it (a retry counting up again from 0): the sweeper
                # judges a segment by when it was last heard of.
                self._db.execute(
                    "UPDATE segments SET updated_at = ? WHERE job_id = ? AND segment_index = ? AND status = ?",
                    (self._clock(), job_id, index, SEGMENT_PENDING),
                )
        return changed > 0
