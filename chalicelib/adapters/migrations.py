"""Versioned schema changes for the metadata database. They run only when asked (`handpipe db
upgrade`, tests); the app merely checks, lazily, that the schema is current."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from chalicelib.adapters.database import Database, epoch_ms
from chalicelib.shared.states import JOB_STATUSES

# utf8mb4 so titles may hold any character; a binary collation so ids, tokens and keys compare
# exactly as SQLite compares them (case matters) and keyset pages sort the same in both.
_MYSQL_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    mysql: tuple[str, ...]

    @classmethod
    def same(cls, version: int, description: str, *statements: str) -> Migration:
        """A step whose SQL is the same in both dialects."""
        return cls(version, description, statements, statements)

    def statements(self, dialect: str) -> tuple[str, ...]:
        if dialect == "sqlite":
            return self.sqlite
        if dialect == "mysql":
            return self.mysql
        raise ValueError(f"no SQL for dialect {dialect!r}")


class SchemaOutOfDate(Exception):
    def __init__(self, current: int, required: int) -> None:
        super().__init__(
            f"database schema is at version {current}, this code needs {required}: run `handpipe db upgrade`"
        )
        self.current = current
        self.required = required


def _table(name: str, columns: str, indexes: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CREATE TABLE for both dialects from one column list. `{text}` is the type of the free-text
    columns: MySQL's TEXT stops at 64 KB, which a long video's summary can exceed."""
    sqlite = (
        f"CREATE TABLE IF NOT EXISTS {name} ({columns.format(text='TEXT')})",
        *(f"CREATE INDEX IF NOT EXISTS {index} ON {name} ({keys})" for index, keys in indexes),
    )
    # MySQL has no CREATE INDEX IF NOT EXISTS, and its DDL is not transactional: declaring the
    # indexes inside CREATE TABLE keeps each table all-or-nothing, so a failed step can be re-run.
    inline = "".join(f", INDEX {index} ({keys})" for index, keys in indexes)
    mysql = (f"CREATE TABLE IF NOT EXISTS {name} ({columns.format(text='MEDIUMTEXT')}{inline}) {_MYSQL_TABLE_OPTIONS}",)
    return sqlite, mysql


_VIDEOS = _table(
    "videos",
    """
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    title VARCHAR(200) NOT NULL,
    filename VARCHAR(255) NOT NULL,
    content_type VARCHAR(100) NOT NULL,
    size_bytes BIGINT NULL,
    s3_key VARCHAR(512) NOT NULL,
    status VARCHAR(20) NOT NULL,
    owner VARCHAR(64) NULL,
    metadata_json {text} NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
    """,
    [("ix_videos_created", "created_at, id"), ("ix_videos_status_created", "status, created_at, id")],
)

_JOBS = _table(
    "jobs",
    """
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    video_id VARCHAR(40) NOT NULL,
    status VARCHAR(20) NOT NULL,
    options_json {text} NOT NULL,
    client_token VARCHAR(64) NULL,
    tag VARCHAR(128) NULL,
    owner VARCHAR(64) NULL,
    error {text} NULL,
    error_code VARCHAR(64) NULL,
    segments_total INT NOT NULL DEFAULT 0,
    segments_done INT NOT NULL DEFAULT 0,
    frames_total INT NULL,
    frames_done INT NOT NULL DEFAULT 0,
    frames_with_hands INT NOT NULL DEFAULT 0,
    result_key VARCHAR(512) NULL,
    summary_json {text} NULL,
    video_json {text} NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT NULL,
    finished_at BIGINT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT uq_jobs_client_token UNIQUE (video_id, client_token),
    CONSTRAINT fk_jobs_video FOREIGN KEY (video_id) REFERENCES videos (id)
    """,
    [("ix_jobs_video_created", "video_id, created_at, id"), ("ix_jobs_status_updated", "status, updated_at")],
)

_SEGMENTS = _table(
    "segments",
    """
    job_id VARCHAR(40) NOT NULL,
    segment_index INT NOT NULL,
    start_ms BIGINT NULL,
    end_ms BIGINT NULL,
    status VARCHAR(20) NOT NULL,
    part_key VARCHAR(512) NOT NULL,
    frames_processed INT NOT NULL DEFAULT 0,
    frames_with_hands INT NOT NULL DEFAULT 0,
    error {text} NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, segment_index),
    CONSTRAINT fk_segments_job FOREIGN KEY (job_id) REFERENCES jobs (id)
    """,
    [],
)

# The job-end events waiting to be handed to the notify queue (service.notifications): written in the
# transaction that ends the job, so a job that ended is announced even if the process dies just after.
_ANNOUNCEMENTS = _table(
    "job_announcements",
    """
    event_id VARCHAR(40) NOT NULL PRIMARY KEY,
    job_id VARCHAR(40) NOT NULL,
    body {text} NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT NULL,
    sent_at BIGINT NULL,
    CONSTRAINT uq_job_announcements_job UNIQUE (job_id)
    """,
    [("ix_job_announcements_unsent", "sent_at, claimed_at")],
)

# Each owner's webhook signing secret is derived from the stage's master secret and this version;
# rotating it is one more version (service.notifications_secrets).
_WEBHOOK_SECRETS = _table(
    "webhook_secrets",
    """
    owner VARCHAR(255) NOT NULL PRIMARY KEY,
    version INT NOT NULL,
    rotated_at BIGINT NOT NULL
    """,
    [],
)


def _status_checks(table: str, statuses: tuple[str, ...]) -> tuple[str, str, str]:
    """SQLite cannot add a CHECK to an existing table, so it gets triggers that refuse what the CHECK
    would (the IntegrityError is the same); MySQL/MariaDB gets the constraint itself."""
    allowed = ", ".join(f"'{status}'" for status in statuses)
    refuse = f"SELECT RAISE(ABORT, '{table}.status must be one of {allowed.replace(chr(39), '')}')"
    return (
        f"CREATE TRIGGER IF NOT EXISTS ck_{table}_status_insert BEFORE INSERT ON {table}"
        f" WHEN NEW.status NOT IN ({allowed}) BEGIN {refuse}; END",
        f"CREATE TRIGGER IF NOT EXISTS ck_{table}_status_update BEFORE UPDATE OF status ON {table}"
        f" WHEN NEW.status NOT IN ({allowed}) BEGIN {refuse}; END",
        f"ADD CONSTRAINT ck_{table}_status CHECK (status IN ({allowed}))",
    )


_JOB_CHECKS = _status_checks("jobs", JOB_STATUSES)

_JOB_ARTIFACTS = _table(
    "job_artifacts",
    """
    job_id VARCHAR(40) NOT NULL PRIMARY KEY,
    requests INT NOT NULL DEFAULT 0,
    requested_at BIGINT NOT NULL,
    written_at BIGINT NULL
    """,
    [("ix_job_artifacts_unwritten", "written_at, requested_at")],
)

# One row per object version an upload notification registered: its primary key (a SHA-256 of the
# bucket, key and version) is what makes a redelivered notification create nothing new.
_INTAKE = _table(
    "object_intake",
    """
    object_ref CHAR(64) NOT NULL PRIMARY KEY,
    s3_key VARCHAR(512) NOT NULL,
    object_version VARCHAR(1024) NOT NULL,
    video_id VARCHAR(40) NOT NULL,
    job_id VARCHAR(40) NULL,
    created_at BIGINT NOT NULL
    """,
    [("ix_object_intake_video", "video_id")],
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "videos, jobs and segments",
        sqlite=_VIDEOS[0] + _JOBS[0] + _SEGMENTS[0],
        mysql=_VIDEOS[1] + _JOBS[1] + _SEGMENTS[1],
    ),
    Migration(
        2,
        "segments.dispatched_at: work items are sent under concurrency caps",
        sqlite=(
            "ALTER TABLE segments ADD COLUMN dispatched_at BIGINT NULL",
            "CREATE INDEX IF NOT EXISTS ix_segments_dispatch ON segments (status, dispatched_at)",
        ),
        # One statement, so the step is all-or-nothing on MySQL too.
        mysql=(
            "ALTER TABLE segments ADD COLUMN dispatched_at BIGINT NULL,"
            " ADD INDEX ix_segments_dispatch (status, dispatched_at)",
        ),
    ),
    Migration.same(
        3,
        "segments.dispatch_count: a segment whose work item was lost is sent again, a few times at most",
        "ALTER TABLE segments ADD COLUMN dispatch_count INT NOT NULL DEFAULT 0",
    ),
    Migration(
        4,
        "one video per s3_key; owners up to 255 characters (IAM ARNs)",
        sqlite=("CREATE UNIQUE INDEX IF NOT EXISTS uq_videos_s3_key ON videos (s3_key)",),
        # MODIFY can run twice, so the jobs statement goes first: if the videos one then fails (two
        # videos already share a key: delete one), re-running the step only repeats what is harmless.
        mysql=(
            "ALTER TABLE jobs MODIFY owner VARCHAR(255) NULL",
            "ALTER TABLE videos MODIFY owner VARCHAR(255) NULL, ADD UNIQUE INDEX uq_videos_s3_key (s3_key)",
        ),
    ),
    Migration(
        5,
        "jobs may be CANCELLED (status checks); jobs.notify_url, job_announcements, webhook_secrets",
        sqlite=(
            "ALTER TABLE jobs ADD COLUMN notify_url VARCHAR(2048) NULL",
            *_JOB_CHECKS[:2],
            *_ANNOUNCEMENTS[0],
            *_WEBHOOK_SECRETS[0],
        ),
        # The new tables first (CREATE ... IF NOT EXISTS can run twice), then the jobs table's change in
        # one statement: a step that failed half-way can be run again.
        mysql=(
            *_ANNOUNCEMENTS[1],
            *_WEBHOOK_SECRETS[1],
            f"ALTER TABLE jobs ADD COLUMN notify_url VARCHAR(2048) NULL, {_JOB_CHECKS[2]}",
        ),
    ),
    Migration(
        6,
        "multipart uploads on videos; idempotent upload-triggered intake; indexes for GET /jobs",
        sqlite=(
            "ALTER TABLE videos ADD COLUMN upload_id VARCHAR(1024) NULL",
            "ALTER TABLE videos ADD COLUMN upload_part_bytes BIGINT NULL",
            *_INTAKE[0],
            "CREATE INDEX IF NOT EXISTS ix_jobs_owner_created ON jobs (owner, created_at, id)",
            "CREATE INDEX IF NOT EXISTS ix_jobs_owner_tag_created ON jobs (owner, tag, created_at, id)",
            "CREATE INDEX IF NOT EXISTS ix_jobs_created ON jobs (created_at, id)",
        ),
        # MySQL's DDL is not transactional: the table first (CREATE ... IF NOT EXISTS can run twice),
        # then one ALTER per table, each all-or-nothing.
        mysql=(
            *_INTAKE[1],
            "ALTER TABLE videos ADD COLUMN upload_id VARCHAR(1024) NULL, ADD COLUMN upload_part_bytes BIGINT NULL",
            "ALTER TABLE jobs ADD INDEX ix_jobs_owner_created (owner, created_at, id),"
            " ADD INDEX ix_jobs_owner_tag_created (owner, tag, created_at, id),"
            " ADD INDEX ix_jobs_created (created_at, id)",
        ),
    ),
    Migration(
        7,
        "job_artifacts: a job SUCCEEDS before its merged result, insights and pictures are written",
        sqlite=_JOB_ARTIFACTS[0],
        mysql=_JOB_ARTIFACTS[1],
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

_LEDGER = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INT NOT NULL PRIMARY KEY, description VARCHAR(200) NOT NULL, applied_at BIGINT NOT NULL)",
    "mysql": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INT NOT NULL PRIMARY KEY, description VARCHAR(200) NOT NULL, applied_at BIGINT NOT NULL"
    f") {_MYSQL_TABLE_OPTIONS}",
}


def _check_steps(steps: Sequence[Migration]) -> None:
    versions = [step.version for step in steps]
    if any(v < 1 for v in versions) or versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be positive and strictly increasing, got {versions}")


def _has_ledger(db: Database) -> bool:
    if db.dialect == "sqlite":
        sql = "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
    row = db.fetchone(sql, ("schema_migrations",))
    return bool(row and int(row["n"]))


def applied_versions(db: Database) -> set[int]:
    if not _has_ledger(db):
        return set()
    return {int(row["version"]) for row in db.fetchall("SELECT version FROM schema_migrations")}


def current_version(db: Database) -> int:
    """The highest version applied; 0 for a database that has never been migrated."""
    return max(applied_versions(db), default=0)


def pending(db: Database, steps: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    applied = applied_versions(db)
    return [step for step in steps if step.version not in applied]


def ensure_current(db: Database, steps: Sequence[Migration] = MIGRATIONS) -> None:
    """Raise SchemaOutOfDate when a step is missing. A database ahead of this code passes: during a
    rolling deploy the old code keeps running on the schema the new code has just added to."""
    missing = pending(db, steps)
    if missing:
        raise SchemaOutOfDate(current_version(db), steps[-1].version)


@contextmanager
def _exclusive(db: Database) -> Iterator[None]:
    """Keep two upgrades of one MySQL database apart (its DDL cannot be rolled back, so the step
    transactions alone do not). SQLite's BEGIN IMMEDIATE already serialises the steps."""
    if db.dialect != "mysql":
        yield
        return
    name = "LEFT(CONCAT('handpipe_migrate:', DATABASE()), 64)"
    row = db.fetchone(f"SELECT GET_LOCK({name}, 60) AS got")
    if not row or row["got"] != 1:
        raise TimeoutError("another `handpipe db upgrade` has held the migration lock for 60 s")
    try:
        yield
    finally:
        db.fetchone(f"SELECT RELEASE_LOCK({name}) AS released")


def upgrade(db: Database, steps: Sequence[Migration] = MIGRATIONS, *, clock: Callable[[], int] = epoch_ms) -> list[int]:
    """Apply the steps not yet applied, in order, each with its ledger row; their versions."""
    _check_steps(steps)
    done: list[int] = []
    with _exclusive(db):
        db.execute(_LEDGER[db.dialect])
        for step in steps:
            with db.transaction():
                if db.fetchone("SELECT version FROM schema_migrations WHERE version = ?", (step.version,)):
                    continue
                for sql in step.statements(db.dialect):
                    db.execute(sql)
                db.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.description, clock()),
                )
            done.append(step.version)
    return done
