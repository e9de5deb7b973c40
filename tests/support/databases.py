"""The databases the tests run against: a real MariaDB (required in CI, skipped elsewhere when down)
and SQLite files, as fixtures every integration module shares, and row builders for the contract suite."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, unquote, urlsplit

import pymysql
import pytest

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import upgrade
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.domain.records import Job, Segment, Video

MYSQL_URL_VARIABLE = "HANDPIPE_TEST_MYSQL_URL"
DEFAULT_MYSQL_URL = "mysql+pymysql://root:@127.0.0.1:3306"
START_MYSQL = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"

T0 = 1_700_000_000_000
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# MySQL server plumbing
# ---------------------------------------------------------------------------------------------


def mysql_unreachable(url: str, reason: str) -> NoReturn:
    """No MySQL: a failure where it must be there (CI, or asked for), a skip elsewhere."""
    where = urlsplit(url)
    message = (
        f"MySQL for the database contract tests is unreachable at {where.hostname}:{where.port or 3306} "
        f"({reason}). Start MariaDB with `{START_MYSQL}` or point {MYSQL_URL_VARIABLE} at a server "
        f"(default {DEFAULT_MYSQL_URL})."
    )
    if os.environ.get("CI") or os.environ.get("HANDPIPE_REQUIRE_MYSQL") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def connect_mysql_server(url: str) -> Any:
    """An autocommit admin connection to the server the URL names (its database part is ignored)."""
    parts = urlsplit(url)
    try:
        return pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=3,
        )
    except pymysql.err.Error as exc:
        mysql_unreachable(url, str(exc))


class MySQLServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = connect_mysql_server(url)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with self.admin.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())

    def create_database(self) -> str:
        name = f"handpipe_test_{uuid.uuid4().hex[:16]}"
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`")

    def url_for(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        parts = urlsplit(self.url)
        if user is not None:
            credentials = f"{quote(user, safe='')}:{quote(password or '', safe='')}"
            netloc = f"{credentials}@{parts.hostname}:{parts.port or 3306}"
        else:
            netloc = parts.netloc
        return f"{parts.scheme}://{netloc}/{database}"

    def kill(self, connection_id: int) -> None:
        """End a session as a server restart or an idle timeout would, and wait until it is gone."""
        self.sql(f"KILL {int(connection_id)}")
        for _ in range(500):
            if not any(row[0] == connection_id for row in self.sql("SHOW PROCESSLIST")):
                return
            time.sleep(0.01)
        raise AssertionError("the killed session did not go away")


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    server = MySQLServer(os.environ.get(MYSQL_URL_VARIABLE) or DEFAULT_MYSQL_URL)
    yield server
    server.admin.close()


@pytest.fixture(scope="session")
def mysql_migrated_url(mysql_server: MySQLServer) -> Iterator[str]:
    """One migrated database for the whole session; tests empty its tables before they start."""
    name = mysql_server.create_database()
    try:
        url = mysql_server.url_for(name)
        db = Database.from_url(url)
        upgrade(db)
        db.close()
        yield url
    finally:
        mysql_server.drop_database(name)


# ---------------------------------------------------------------------------------------------
# Fixtures for both dialects
# ---------------------------------------------------------------------------------------------

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("mysql", id="mysql", marks=pytest.mark.mysql)]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int = 1000) -> int:
        self.now += ms
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def mysql_session_db(mysql_migrated_url: str) -> Iterator[Database]:
    # Shared by the tests: this server takes ~50 ms per connection, several times a test's own cost.
    db = Database.from_url(mysql_migrated_url)
    yield db
    db.close()


class Store:
    """A migrated store with no rows in it: its URL, a connection, and a way to open more."""

    def __init__(self, url: str, db: Database) -> None:
        self.url = url
        self.db = db
        self.opened: list[Database] = []

    def open(self) -> Database:
        self.opened.append(Database.from_url(self.url))
        return self.opened[-1]

    def close(self) -> None:
        for database in self.opened:
            database.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'handpipe.db'}"
        db = Database.from_url(url)
        upgrade(db)
        result = Store(url, db)
        result.opened.append(db)
    else:
        db = request.getfixturevalue("mysql_session_db")
        with db.transaction():
            for table in (
                "job_announcements",
                "webhook_secrets",
                "job_artifacts",
                "object_intake",
                "segments",
                "jobs",
                "videos",
            ):
                db.execute(f"DELETE FROM {table}")
        result = Store(request.getfixturevalue("mysql_migrated_url"), db)
    yield result
    result.close()


@pytest.fixture
def db(store: Store) -> Database:
    return store.db


@pytest.fixture
def open_db(store: Store) -> Callable[[], Database]:
    return store.open


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    """A store that has never been migrated."""
    if request.param == "sqlite":
        db = Database.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
        yield db
        db.close()
        return
    server: MySQLServer = request.getfixturevalue("mysql_server")
    name = server.create_database()
    db = Database.from_url(server.url_for(name))
    try:
        yield db
    finally:
        db.close()
        server.drop_database(name)


@pytest.fixture
def videos(db: Database, clock: Clock) -> VideoRepository:
    return VideoRepository(db, clock)


@pytest.fixture
def jobs(db: Database, clock: Clock) -> JobRepository:
    return JobRepository(db, clock)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def make_video(**overrides: Any) -> Video:
    video_id = overrides.pop("id", None) or new_id("vid")
    fields: dict[str, Any] = {
        "id": video_id,
        "title": "Sign language, take 1",
        "filename": "take1.mp4",
        "content_type": "video/mp4",
        "s3_key": f"videos/{video_id}/take1.mp4",
        "status": "READY",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)
    return Video(**fields)


def make_job(video_id: str, **overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_id("job"),
        "video_id": video_id,
        "status": "QUEUED",
        "options": {"num_hands": 2, "model": "full"},
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(overrides)
    return Job(**fields)


def make_segments(job_id: str, count: int) -> list[Segment]:
    return [
        Segment(
            job_id=job_id,
            segment_index=i,
            part_key=f"results/v/{job_id}/parts/{i:05d}.json.gz",
            updated_at=T0,
            start_ms=i * 10_000,
            end_ms=(i + 1) * 10_000,
        )
        for i in range(count)
    ]


def job_with_segments(videos: VideoRepository, jobs: JobRepository, count: int) -> Job:
    video = make_video()
    videos.add(video)
    job, _ = jobs.create(make_job(video.id, status="IN_PROGRESS", segments_total=count))
    jobs.add_segments(job.id, make_segments(job.id, count))
    return job


def all_pages(fetch: Callable[[tuple[int, str] | None], list[_T]], limit: int) -> list[_T]:
    """Follow keyset pages to the end, checking each page's size on the way."""
    rows: list[_T] = []
    after: tuple[int, str] | None = None
    while True:
        page = fetch(after)
        assert len(page) <= limit
        if not page:
            return rows
        rows.extend(page)
        last: Any = page[-1]
        after = (last.created_at, last.id)
        assert len(rows) < 10_000, "pagination does not end"


def fetch_job(jobs: JobRepository, job_id: str) -> Job:
    job = jobs.get(job_id)
    assert job is not None
    return job
