"""Contract tests for the metadata database: one suite run against SQLite and against a real MySQL
(MariaDB), so that the local stack and AWS store and answer exactly alike."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest

from chalicelib.adapters.database import Database, DatabaseUnavailable, IntegrityError
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    SchemaOutOfDate,
    current_version,
    ensure_current,
    upgrade,
)
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.domain.records import Video
from tests.support.databases import (
    T0,
    Clock,
    MySQLServer,
    all_pages,
    connect_mysql_server,
    fetch_job,
    job_with_segments,
    make_job,
    make_segments,
    make_video,
    new_id,
)

# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------


def test_migration_versions_start_at_one_and_increase() -> None:
    # Gaps are allowed: parallel branches take their own version numbers.
    versions = [step.version for step in MIGRATIONS]
    assert versions[0] == 1 and versions == sorted(set(versions)) and versions[-1] == LATEST_VERSION
    assert all(step.sqlite and step.mysql and step.description for step in MIGRATIONS)


def test_migrations_apply_in_order_once_and_never_on_their_own(empty_db: Database, clock: Clock) -> None:
    empty_db.ping()
    assert current_version(empty_db) == 0  # connecting migrated nothing
    with pytest.raises(SchemaOutOfDate) as raised:
        ensure_current(empty_db)
    assert str(raised.value) == (
        f"database schema is at version 0, this code needs {LATEST_VERSION}: run `handpipe db upgrade`"
    )

    assert upgrade(empty_db, clock=clock) == [step.version for step in MIGRATIONS]
    assert upgrade(empty_db, clock=clock) == []
    assert current_version(empty_db) == LATEST_VERSION
    ensure_current(empty_db)
    ledger = empty_db.fetchall("SELECT version, description, applied_at FROM schema_migrations ORDER BY version")
    assert ledger == [{"version": s.version, "description": s.description, "applied_at": T0} for s in MIGRATIONS]


def test_a_new_step_is_applied_alone_and_an_older_code_accepts_the_newer_schema(empty_db: Database) -> None:
    upgrade(empty_db)
    extra = Migration.same(LATEST_VERSION + 1, "a test table", "CREATE TABLE extra_test (x INT NOT NULL)")
    newer_code = (*MIGRATIONS, extra)
    with pytest.raises(SchemaOutOfDate, match=f"at version {LATEST_VERSION}, this code needs {LATEST_VERSION + 1}"):
        ensure_current(empty_db, newer_code)

    assert upgrade(empty_db, newer_code) == [LATEST_VERSION + 1]
    assert upgrade(empty_db, newer_code) == []
    assert empty_db.execute("INSERT INTO extra_test (x) VALUES (?)", (1,)) == 1
    assert current_version(empty_db) == LATEST_VERSION + 1
    ensure_current(empty_db)  # code at LATEST_VERSION still runs during a rolling deploy


def test_steps_out_of_order_are_refused(empty_db: Database) -> None:
    first = Migration.same(1, "one", "CREATE TABLE one_test (x INT)")
    second = Migration.same(2, "two", "CREATE TABLE two_test (x INT)")
    with pytest.raises(ValueError, match="strictly increasing"):
        upgrade(empty_db, (second, first))
    assert current_version(empty_db) == 0


# ---------------------------------------------------------------------------------------------
# Connections, URLs, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "handpipe.db",
        "postgresql://user:pw@localhost/handpipe",
        "sqlite://",
        "sqlite:///",
        "sqlite://relative.db",
        "sqlite:///handpipe.db?mode=ro",
        "mysql://user:pw@localhost:notaport/handpipe",
        "mysql://user:pw@localhost:99999/handpipe",
        "mysql://user:pw@localhost:3306",
        "mysql://user:pw@localhost:3306/",
        "mysql://user:pw@localhost/handpipe/extra",
        "mysql://user:pw@localhost/handpipe?ssl=true",
        "mysql://:pw@localhost/handpipe",
        "mysql://user:pw@/handpipe",
        "mysql+mysqldb://user:pw@localhost/handpipe",
    ],
)
def test_invalid_urls_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        Database.from_url(url)
    message = str(raised.value)
    assert "sqlite:///" in message and "mysql+pymysql://user:password@host:port/dbname" in message
    assert "pw@" not in message  # passwords never reach a log


def test_url_forms_and_their_dialects(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Database.from_url("sqlite:///relative.db")
    relative.ping()
    assert relative.dialect == "sqlite" and (tmp_path / "relative.db").is_file()
    relative.close()

    absolute = Database.from_url(f"sqlite:///{tmp_path / 'absolute.db'}")  # i.e. sqlite:////tmp/...
    absolute.ping()
    assert (tmp_path / "absolute.db").is_file()
    absolute.close()

    memory = Database.from_url("sqlite:///:memory:")
    upgrade(memory)
    assert current_version(memory) == LATEST_VERSION

    for url in ("mysql://u:secret@db.example:3307/handpipe", "mysql+pymysql://u:secret@db.example/handpipe"):
        database = Database.from_url(url)  # lazy: nothing listens there, and nothing is tried yet
        assert database.dialect == "mysql"
        assert "secret" not in repr(database)


def test_a_closed_mysql_port_is_unavailable_not_a_crash() -> None:
    db = Database.from_url("mysql+pymysql://root:s3cret@127.0.0.1:1/handpipe")
    with pytest.raises(DatabaseUnavailable) as raised:
        db.ping()
    assert isinstance(raised.value.__cause__, pymysql.err.OperationalError)
    assert raised.value.__cause__.args[0] == 2003
    assert "s3cret" not in str(raised.value)
    with pytest.raises(DatabaseUnavailable):
        VideoRepository(db).get("vid_x")
    with pytest.raises(DatabaseUnavailable):
        with db.transaction():
            pass


def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Any) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(DatabaseUnavailable, match="unable to open"):
        db.ping()


@pytest.mark.parametrize(
    ("env", "outcome"),
    [({"CI": "true"}, "fail"), ({"HANDPIPE_REQUIRE_MYSQL": "1"}, "fail"), ({}, "skip")],
    ids=["ci", "required", "elsewhere"],
)
def test_missing_mysql_fails_where_required_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], outcome: str
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("HANDPIPE_REQUIRE_MYSQL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"):
        connect_mysql_server("mysql+pymysql://root:@127.0.0.1:1")


def test_rows_are_dicts_and_placeholders_leave_literals_alone(db: Database) -> None:
    row = db.fetchone("SELECT '100%' AS percent, 'why?' AS question, ? AS value, ? AS number", ("%s ?", 7))
    assert row == {"percent": "100%", "question": "why?", "value": "%s ?", "number": 7}
    assert db.fetchone("SELECT 1 AS one FROM videos") is None
    assert db.fetchall("SELECT id FROM videos") == []


def test_transactions_commit_roll_back_and_nest(db: Database, videos: VideoRepository) -> None:
    lost, kept, inner = make_video(), make_video(), make_video()
    with pytest.raises(RuntimeError):
        with db.transaction():
            videos.add(lost)
            raise RuntimeError("boom")
    assert videos.get(lost.id) is None

    with db.transaction():
        videos.add(kept)
        with pytest.raises(IntegrityError):
            with db.transaction():
                videos.add(inner)
                videos.add(kept)  # duplicate id: the savepoint goes, the outer work stays
    assert videos.get(kept.id) == kept
    assert videos.get(inner.id) is None


def test_execute_counts_matched_rows_in_both_dialects(db: Database, videos: VideoRepository) -> None:
    for _ in range(3):
        videos.add(make_video())
    # MySQL would report 0 "changed" rows here without FOUND_ROWS; SQLite reports 3.
    assert db.execute("UPDATE videos SET title = title WHERE status = ?", ("READY",)) == 3


def test_one_database_object_is_safe_to_share_between_threads(db: Database, videos: VideoRepository) -> None:
    errors: list[BaseException] = []
    added: list[Video] = []

    def work() -> None:
        try:
            for _ in range(15):
                video = make_video()
                with db.transaction():
                    videos.add(video)
                    assert videos.get(video.id) == video
                added.append(video)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(videos.list(limit=100)) == len(added) == 60


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


def test_a_video_round_trips(videos: VideoRepository) -> None:
    full = make_video(size_bytes=12_345_678_901, owner="alice", metadata={"duration_ms": 61_000, "fps": 29.97})
    bare = make_video()
    videos.add(full)
    videos.add(bare)
    assert videos.get(full.id) == full
    assert videos.get(bare.id) == bare
    assert bare.metadata is None and bare.size_bytes is None
    assert videos.get(new_id("vid")) is None
    with pytest.raises(IntegrityError):
        videos.add(make_video(id=full.id))


def test_videos_page_newest_first_with_no_row_twice_or_missing(videos: VideoRepository) -> None:
    # Three videos share each created_at, so the id has to break ties between pages.
    made = [make_video(created_at=T0 + (i // 3) * 1000, status="READY" if i % 2 else "UPLOADING") for i in range(23)]
    for video in random.Random(7).sample(made, len(made)):
        videos.add(video)
    newest_first = sorted(made, key=lambda v: (v.created_at, v.id), reverse=True)

    assert all_pages(lambda after: videos.list(limit=5, after=after), 5) == newest_first
    assert videos.list(limit=5) == newest_first[:5]
    ready = [v for v in newest_first if v.status == "READY"]
    assert all_pages(lambda after: videos.list(status="READY", limit=4, after=after), 4) == ready
    assert videos.list(status="DELETED") == []
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit"):
            videos.list(limit=bad)


def test_videos_are_scoped_to_their_owner(videos: VideoRepository) -> None:
    alices = [make_video(owner="alice", created_at=T0 + i) for i in range(3)]
    bobs = make_video(owner="bob")
    for video in (*alices, bobs):
        videos.add(video)
    assert videos.get(alices[0].id, owner="alice") == alices[0]
    assert videos.get(alices[0].id, owner="bob") is None
    assert videos.get(alices[0].id) == alices[0]
    assert [v.id for v in videos.list(owner="alice")] == [v.id for v in reversed(alices)]
    assert all_pages(lambda after: videos.list(owner="alice", limit=2, after=after), 2) == alices[::-1]
    assert videos.list(owner="bob") == [bobs]
    assert videos.list(owner="carol") == []


def test_one_video_per_key_and_owners_as_long_as_an_iam_arn(videos: VideoRepository, jobs: JobRepository) -> None:
    arn = "arn:aws:sts::123456789012:assumed-role/" + "R" * 64 + "/" + "s" * 64
    first = make_video(s3_key="incoming/o/a.mp4", owner=arn)
    videos.add(first)
    assert videos.find_by_key("incoming/o/a.mp4") == first and videos.get(first.id, owner=arn) == first
    assert videos.find_by_key("incoming/o/a.mp") is None
    with pytest.raises(IntegrityError):
        videos.add(make_video(s3_key="incoming/o/a.mp4"))
    videos.add(make_video(s3_key="incoming/o/a.mp4.bak"))
    job, _ = jobs.create(make_job(first.id, owner=arn))
    assert jobs.get(job.id, owner=arn) == job
    with pytest.raises(ValueError, match="owner has 256 characters"):
        videos.add(make_video(owner="o" * 256))


def test_video_status_changes_only_from_an_expected_status(videos: VideoRepository, clock: Clock) -> None:
    video = make_video(status="UPLOADING")
    videos.add(video)
    clock.advance()
    assert not videos.set_status(video.id, "READY", expected={"PROCESSING"})
    assert videos.get(video.id) == video  # untouched, updated_at included
    assert not videos.set_status(video.id, "READY", expected=())
    assert videos.set_status(video.id, "READY", expected={"UPLOADING"})
    assert not videos.set_status(video.id, "READY", expected={"UPLOADING"})
    stored = videos.get(video.id)
    assert stored is not None and stored.status == "READY" and stored.updated_at == clock.now
    assert videos.set_status(video.id, "ARCHIVED")
    assert not videos.set_status(new_id("vid"), "READY")
    with pytest.raises(TypeError):
        videos.set_status(video.id, "READY", expected="ARCHIVED")


def test_video_metadata_is_replaced(videos: VideoRepository, clock: Clock) -> None:
    video = make_video()
    videos.add(video)
    clock.advance()
    videos.set_metadata(video.id, {"duration_ms": 1500, "fps": 30.0, "size": [1920, 1080], "rotation": 90})
    stored = videos.get(video.id)
    assert stored is not None
    assert stored.metadata == {"duration_ms": 1500, "fps": 30.0, "size": [1920, 1080], "rotation": 90}
    assert stored.updated_at == clock.now


def test_deleting_a_video_takes_its_jobs_and_segments(videos: VideoRepository, jobs: JobRepository) -> None:
    doomed = job_with_segments(videos, jobs, 3)
    jobs.create(make_job(doomed.video_id, client_token="again"))
    kept = job_with_segments(videos, jobs, 2)

    assert videos.delete(doomed.video_id)
    assert videos.get(doomed.video_id) is None
    assert jobs.get(doomed.id) is None
    assert jobs.list_for_video(doomed.video_id) == []
    assert jobs.segments(doomed.id) == []
    assert not videos.delete(doomed.video_id)

    assert videos.get(kept.video_id) is not None
    assert jobs.get(kept.id) == kept
    assert len(jobs.segments(kept.id)) == 2


def test_unicode_survives_and_lengths_are_enforced_alike(videos: VideoRepository, jobs: JobRepository) -> None:
    emoji = make_video(title="Hände 🖐🤚 ✋ — 手话", owner="zoë 👩🏽‍💻", metadata={"comment": "👍 ok"})
    widest = make_video(title="🖐" * 200)  # 200 four-byte characters still fit VARCHAR(200)
    for video in (emoji, widest):
        videos.add(video)
        assert videos.get(video.id) == video
    assert videos.list(owner="zoë 👩🏽‍💻") == [emoji]
    with pytest.raises(ValueError, match="title has 201 characters"):
        videos.add(make_video(title="x" * 201))
    job, _ = jobs.create(make_job(emoji.id, tag="🏷️ first", options={"note": "日本語"}))
    assert jobs.get(job.id) == job


SNEAKY = [
    "Robert'); DROP TABLE videos;--",
    "' OR '1'='1",
    '"; DELETE FROM jobs WHERE "1"="1',
    "100% ? %s %(name)s ?? \\' \\\\ `x`",
]


@pytest.mark.parametrize("text", SNEAKY)
def test_sql_looking_strings_are_stored_literally(
    db: Database, videos: VideoRepository, jobs: JobRepository, text: str
) -> None:
    bystander = make_video(owner="someone")
    video = make_video(title=text, filename=text, owner=text[:64], metadata={text: text})
    videos.add(bystander)
    videos.add(video)
    assert videos.get(video.id) == video
    assert videos.list(owner=text[:64]) == [video]
    assert videos.get(text) is None
    job, created = jobs.create(make_job(video.id, client_token=text[:64], tag=text, options={"q": text}))
    assert created and jobs.get(job.id) == job
    assert jobs.create(make_job(video.id, client_token=text[:64]))[0] == job
    assert db.fetchone("SELECT ? AS echoed", (text,)) == {"echoed": text}
    assert len(videos.list()) == 2


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def test_a_job_round_trips_and_is_scoped_to_its_owner(videos: VideoRepository, jobs: JobRepository) -> None:
    video = make_video(owner="alice")
    videos.add(video)
    job = make_job(video.id, owner="alice", tag="first pass", options={"num_hands": 4, "sample_fps": 5.0})
    assert jobs.create(job) == (job, True)
    assert jobs.get(job.id) == job
    assert jobs.get(job.id, owner="alice") == job
    assert jobs.get(job.id, owner="bob") is None
    assert jobs.get(new_id("job")) is None


def test_a_client_token_makes_one_job(videos: VideoRepository, jobs: JobRepository) -> None:
    video, other_video = make_video(), make_video()
    videos.add(video)
    videos.add(other_video)
    first, created = jobs.create(make_job(video.id, client_token="retry-me"))
    assert created

    again, created = jobs.create(make_job(video.id, client_token="retry-me", options={"model": "lite"}))
    assert not created and again == first
    assert jobs.find_by_client_token(video.id, "retry-me") == first
    assert jobs.find_by_client_token(other_video.id, "retry-me") is None
    assert [j.id for j in jobs.list_for_video(video.id)] == [first.id]

    # Tokens are per video, case matters, and jobs without one never collide.
    assert jobs.create(make_job(other_video.id, client_token="retry-me"))[1]
    assert jobs.create(make_job(video.id, client_token="RETRY-ME"))[1]
    assert jobs.create(make_job(video.id))[1] and jobs.create(make_job(video.id))[1]
    assert len(jobs.list_for_video(video.id)) == 4


def test_job_integrity_errors_that_are_not_the_token_propagate(videos: VideoRepository, jobs: JobRepository) -> None:
    video = make_video()
    videos.add(video)
    with pytest.raises(IntegrityError):
        jobs.create(make_job(new_id("vid"), client_token="t"))  # no such video
    job, _ = jobs.create(make_job(video.id))
    with pytest.raises(IntegrityError):
        jobs.create(make_job(video.id, id=job.id, client_token="other"))  # reused id


def test_deleting_a_job_takes_its_segments_and_frees_its_token(videos: VideoRepository, jobs: JobRepository) -> None:
    job = job_with_segments(videos, jobs, 2)
    token_job, _ = jobs.create(make_job(job.video_id, client_token="once"))
    jobs.add_segments(token_job.id, make_segments(token_job.id, 1))
    assert jobs.delete(token_job.id)
    assert jobs.get(token_job.id) is None and jobs.segments(token_job.id) == []
    assert not jobs.delete(token_job.id)
    assert jobs.create(make_job(job.video_id, client_token="once"))[1]  # a retry may use the token again
    assert jobs.get(job.id) == job and len(jobs.segments(job.id)) == 2


def test_jobs_page_newest_first_and_active_ones_are_counted(videos: VideoRepository, jobs: JobRepository) -> None:
    video, other = make_video(), make_video()
    videos.add(video)
    videos.add(other)
    statuses = ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED"]
    made = [make_job(video.id, created_at=T0 + (i // 2), status=statuses[i % 4]) for i in range(11)]
    for job in made:
        jobs.create(job)
    jobs.create(make_job(other.id))
    newest_first = sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
    assert all_pages(lambda after: jobs.list_for_video(video.id, limit=3, after=after), 3) == newest_first
    assert jobs.count_active_for_video(video.id) == 6
    assert jobs.count_active_for_video(other.id) == 1
    assert jobs.count_active_for_video(new_id("vid")) == 0


def test_transitions_are_conditional(videos: VideoRepository, jobs: JobRepository, clock: Clock) -> None:
    video = make_video()
    videos.add(video)
    job, _ = jobs.create(make_job(video.id))

    started = clock.advance()
    assert jobs.transition(
        job.id,
        from_statuses={"QUEUED"},
        to_status="IN_PROGRESS",
        started_at=started,
        segments_total=3,
        frames_total=900,
    )
    running = fetch_job(jobs, job.id)
    assert (running.status, running.started_at, running.updated_at) == ("IN_PROGRESS", started, started)
    assert (running.segments_total, running.frames_total) == (3, 900)

    clock.advance()
    assert not jobs.transition(job.id, from_statuses={"QUEUED"}, to_status="IN_PROGRESS", started_at=clock.now)
    assert fetch_job(jobs, job.id) == running  # nothing changed, updated_at included
    assert not jobs.transition(job.id, from_statuses=[], to_status="FAILED")
    assert not jobs.transition(new_id("job"), from_statuses={"QUEUED"}, to_status="FAILED")

    finished = clock.advance()
    summary = {"frames_processed": 900, "hand_time_ranges": [{"start_ms": 0.0, "end_ms": 1500.5}]}
    assert jobs.transition(
        job.id,
        from_statuses=("QUEUED", "IN_PROGRESS"),
        to_status="SUCCEEDED",
        finished_at=finished,
        result_key="results/x/result.json.gz",
        summary=summary,
        video_metadata={"fps": 30.0},
        error=None,
    )
    done = fetch_job(jobs, job.id)
    assert (done.status, done.finished_at, done.result_key) == ("SUCCEEDED", finished, "results/x/result.json.gz")
    assert done.summary == summary and done.video_metadata == {"fps": 30.0}
    assert not jobs.transition(job.id, from_statuses=("QUEUED", "IN_PROGRESS"), to_status="FAILED", error="late")
    assert fetch_job(jobs, job.id) == done


def test_failing_a_job_records_why_and_unknown_fields_are_refused(videos: VideoRepository, jobs: JobRepository) -> None:
    video = make_video()
    videos.add(video)
    job, _ = jobs.create(make_job(video.id))
    assert jobs.transition(
        job.id, from_statuses={"QUEUED"}, to_status="FAILED", error="no video stream", error_code="undecodable"
    )
    failed = fetch_job(jobs, job.id)
    assert (failed.error, failed.error_code) == ("no video stream", "undecodable")
    with pytest.raises(TypeError, match="owner"):
        jobs.transition(job.id, from_statuses={"FAILED"}, to_status="QUEUED", owner="mallory")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        jobs.transition(job.id, from_statuses="FAILED", to_status="QUEUED")
    assert fetch_job(jobs, job.id) == failed


def test_jobs_untouched_for_too_long_are_found(videos: VideoRepository, jobs: JobRepository, clock: Clock) -> None:
    video = make_video()
    videos.add(video)
    old, _ = jobs.create(make_job(video.id, status="IN_PROGRESS", updated_at=T0))
    older, _ = jobs.create(make_job(video.id, status="IN_PROGRESS", updated_at=T0 - 5))
    jobs.create(make_job(video.id, status="IN_PROGRESS", updated_at=T0 + 60_000))
    jobs.create(make_job(video.id, status="QUEUED", updated_at=T0))
    assert [j.id for j in jobs.stuck(status="IN_PROGRESS", updated_before_ms=T0 + 1)] == [older.id, old.id]
    assert [j.id for j in jobs.stuck(status="IN_PROGRESS", updated_before_ms=T0 + 1, limit=1)] == [older.id]

    jobs.add_segments(old.id, make_segments(old.id, 1))
    clock.now = T0 + 30_000
    jobs.record_progress(old.id, 0, 10)  # progress is a sign of life
    assert [j.id for j in jobs.stuck(status="IN_PROGRESS", updated_before_ms=T0 + 1)] == [older.id]


def test_job_ids_by_status_page_in_id_order(videos: VideoRepository, jobs: JobRepository) -> None:
    """What a restarted local stack walks to resume: every job of a status, once, in pages."""
    video = make_video()
    videos.add(video)
    running = [jobs.create(make_job(video.id, status="IN_PROGRESS"))[0].id for _ in range(5)]
    jobs.create(make_job(video.id, status="QUEUED"))
    first = jobs.ids_with_status("IN_PROGRESS", limit=3)
    rest = jobs.ids_with_status("IN_PROGRESS", limit=3, after_id=first[-1])
    assert first + rest == sorted(running) and len(first) == 3
    assert jobs.ids_with_status("IN_PROGRESS", after_id=rest[-1]) == []
    assert jobs.ids_with_status("SUCCEEDED") == []


# ---------------------------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------------------------


def test_adding_segments_is_idempotent(videos: VideoRepository, jobs: JobRepository) -> None:
    job = job_with_segments(videos, jobs, 3)
    planned = make_segments(job.id, 3)
    assert jobs.segments(job.id) == planned
    jobs.add_segments(job.id, planned)
    jobs.add_segments(job.id, list(reversed(make_segments(job.id, 5))))  # the first three exist already
    assert [s.segment_index for s in jobs.segments(job.id)] == [0, 1, 2, 3, 4]
    assert jobs.segments(job.id)[:3] == planned
    with pytest.raises(ValueError, match="belongs to job"):
        jobs.add_segments(job.id, make_segments(new_id("job"), 1))
    with pytest.raises(IntegrityError):
        missing = new_id("job")
        jobs.add_segments(missing, make_segments(missing, 1))


def test_a_redelivered_completion_counts_once(videos: VideoRepository, jobs: JobRepository, clock: Clock) -> None:
    job = job_with_segments(videos, jobs, 3)
    done_at = clock.advance()
    assert jobs.complete_segment(job.id, 1, frames_processed=300, frames_with_hands=120)
    after_first = fetch_job(jobs, job.id)
    assert (after_first.segments_done, after_first.frames_done, after_first.frames_with_hands) == (1, 300, 120)
    assert after_first.updated_at == done_at

    clock.advance()
    assert not jobs.complete_segment(job.id, 1, frames_processed=300, frames_with_hands=120)
    assert not jobs.complete_segment(job.id, 1, frames_processed=999, frames_with_hands=999)
    assert fetch_job(jobs, job.id) == after_first
    segment = jobs.segments(job.id)[1]
    assert (segment.status, segment.frames_processed, segment.frames_with_hands) == ("SUCCEEDED", 300, 120)
    assert not jobs.complete_segment(job.id, 7, frames_processed=1, frames_with_hands=1)  # no such segment

    assert jobs.complete_segment(job.id, 0, frames_processed=250, frames_with_hands=5)
    totals = fetch_job(jobs, job.id)
    assert (totals.segments_done, totals.frames_done, totals.frames_with_hands) == (2, 550, 125)


def test_progress_only_grows_and_completion_does_not_add_to_it(videos: VideoRepository, jobs: JobRepository) -> None:
    job = job_with_segments(videos, jobs, 3)
    assert jobs.record_progress(job.id, 0, 10)
    assert not jobs.record_progress(job.id, 0, 5)  # a late, older report
    assert not jobs.record_progress(job.id, 0, 10)
    assert jobs.record_progress(job.id, 1, 7)
    assert jobs.record_progress(job.id, 0, 20)
    assert fetch_job(jobs, job.id).frames_done == 27

    # The final count replaces the running one rather than being added to it.
    assert jobs.complete_segment(job.id, 0, frames_processed=30, frames_with_hands=12)
    assert (fetch_job(jobs, job.id).frames_done, fetch_job(jobs, job.id).segments_done) == (37, 1)
    assert not jobs.record_progress(job.id, 0, 50)  # finished segments take no more progress
    assert not jobs.record_progress(job.id, 9, 50)
    assert jobs.complete_segment(job.id, 1, frames_processed=5, frames_with_hands=0)  # may end below its progress
    final = fetch_job(jobs, job.id)
    assert (final.frames_done, final.frames_with_hands, final.segments_done) == (35, 12, 2)
    assert [s.frames_processed for s in jobs.segments(job.id)] == [30, 5, 0]


def test_a_segment_fails_once_and_then_takes_no_completion(videos: VideoRepository, jobs: JobRepository) -> None:
    job = job_with_segments(videos, jobs, 2)
    assert jobs.fail_segment(job.id, 0, error="decoder crashed")
    assert not jobs.fail_segment(job.id, 0, error="decoder crashed again")
    assert not jobs.complete_segment(job.id, 0, frames_processed=10, frames_with_hands=1)
    segment = jobs.segments(job.id)[0]
    assert (segment.status, segment.error) == ("FAILED", "decoder crashed")
    assert jobs.complete_segment(job.id, 1, frames_processed=10, frames_with_hands=1)
    assert not jobs.fail_segment(job.id, 1, error="too late")
    assert fetch_job(jobs, job.id).segments_done == 1


def test_concurrent_segment_events_neither_deadlock_nor_lose_counts(
    open_db: Callable[[], Database], db: Database, videos: VideoRepository, clock: Clock
) -> None:
    jobs = JobRepository(db, clock)
    job = job_with_segments(videos, jobs, 8)
    errors: list[BaseException] = []
    wins: list[int] = []

    def work(worker: int, database: Database) -> None:
        repo = JobRepository(database, clock)
        try:
            for index in (2 * worker, 2 * worker + 1):
                for frames in range(10, 110, 10):
                    repo.record_progress(job.id, index, frames)
                if repo.complete_segment(job.id, index, frames_processed=100, frames_with_hands=index):
                    wins.append(index)
            for index in range(8):  # redelivered events for everyone's segments
                if repo.complete_segment(job.id, index, frames_processed=100, frames_with_hands=index):
                    wins.append(index)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # Two workers share the fixture's connection (as the local stack's threads do), two have their own.
    databases = [db, db, open_db(), open_db()]
    threads = [threading.Thread(target=work, args=(i, database)) for i, database in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(wins) == list(range(8))
    final = fetch_job(jobs, job.id)
    assert (final.segments_done, final.frames_done, final.frames_with_hands) == (8, 800, sum(range(8)))


# ---------------------------------------------------------------------------------------------
# MySQL connections that go away
# ---------------------------------------------------------------------------------------------


@pytest.mark.mysql
def test_a_connection_the_server_dropped_is_replaced(mysql_server: MySQLServer, mysql_migrated_url: str) -> None:
    db = Database.from_url(mysql_migrated_url)
    try:
        first = db.fetchone("SELECT CONNECTION_ID() AS id")
        assert first is not None
        mysql_server.kill(first["id"])  # as an idle timeout does to a sleeping Lambda container
        second = db.fetchone("SELECT CONNECTION_ID() AS id")
        assert second is not None and second["id"] != first["id"]
        db.ping()
    finally:
        db.close()


@pytest.mark.mysql
def test_losing_the_connection_mid_transaction_is_unavailable_and_rolled_back(
    mysql_server: MySQLServer, mysql_migrated_url: str
) -> None:
    db = Database.from_url(mysql_migrated_url)
    videos = VideoRepository(db)
    lost = make_video()
    try:
        with pytest.raises(DatabaseUnavailable):
            with db.transaction():
                videos.add(lost)
                row = db.fetchone("SELECT CONNECTION_ID() AS id")
                assert row is not None
                mysql_server.kill(row["id"])
                with pytest.raises(DatabaseUnavailable):
                    videos.add(make_video())
                videos.get(lost.id)  # the block carries on regardless: still unavailable, not a crash
        assert videos.get(lost.id) is None  # a fresh connection, and the half-done work is gone
    finally:
        db.close()


@pytest.mark.mysql
def test_credentials_in_the_url_are_percent_decoded(mysql_server: MySQLServer, mysql_migrated_url: str) -> None:
    user, password = f"hp@{uuid.uuid4().hex[:8]}", "p@ss:w/rd%?#"
    database = urlsplit(mysql_migrated_url).path.lstrip("/")
    mysql_server.sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    try:
        mysql_server.sql(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
        db = Database.from_url(mysql_server.url_for(database, user=user, password=password))
        row = db.fetchone("SELECT CURRENT_USER() AS who, DATABASE() AS db")
        db.close()
        assert row is not None and row["who"].startswith(user + "@") and row["db"] == database
    finally:
        mysql_server.sql(f"DROP USER '{user}'@'%'")


def test_waiting_jobs_take_turns_across_owners_least_busy_owner_first(
    videos: VideoRepository, jobs: JobRepository, clock: Clock
) -> None:
    video = make_video()
    videos.add(video)
    made: dict[str, list[str]] = {}
    for owner, count in (("flood", 3), ("quiet", 2), (None, 1)):
        for _ in range(count):
            job, _ = jobs.create(make_job(video.id, owner=owner, status="IN_PROGRESS", created_at=clock.advance()))
            jobs.add_segments(job.id, make_segments(job.id, 4))
            made.setdefault(str(owner), []).append(job.id)
    flood, quiet, nobody = made["flood"], made["quiet"], made["None"]
    assert len(jobs.claim_for_dispatch(flood[0], 3)) == 3  # flood: 3 segments on workers
    assert len(jobs.claim_for_dispatch(nobody[0], 1)) == 1  # no owner: 1

    # Round 1 (every owner's oldest), least busy first; then round 2, then 3. Oldest-first would
    # have put all of the flood before anyone else.
    def waiting(**limit: int) -> list[str]:
        pairs = jobs.jobs_waiting_for_dispatch(**limit)
        assert all(owner == jobs.get(job_id).owner for job_id, owner in pairs)  # type: ignore[union-attr]
        return [job_id for job_id, _ in pairs]

    assert waiting() == [quiet[0], nobody[0], flood[0], quiet[1], flood[1], flood[2]]
    assert waiting(limit=2) == [quiet[0], nobody[0]]
    jobs.claim_for_dispatch(quiet[0], 4)  # quiet: 4 on workers, and its first job has nothing left to send
    assert waiting() == [nobody[0], flood[0], quiet[1], flood[1], flood[2]]
    jobs.transition(nobody[0], from_statuses=("IN_PROGRESS",), to_status="FAILED")
    assert waiting() == [flood[0], quiet[1], flood[1], flood[2]]


# ---------------------------------------------------------------------------------------------
# Cancelled jobs, job-end announcements and webhook secrets (migration 5)
# ---------------------------------------------------------------------------------------------


def test_a_cancelled_job_round_trips_with_its_webhook_and_only_known_statuses_are_stored(
    db: Database, videos: VideoRepository, jobs: JobRepository
) -> None:
    from chalicelib.shared.states import JobStatus

    video = make_video()
    videos.add(video)
    job = make_job(video.id, notify_url="https://hooks.example.com/h?" + "q" * 1900)
    jobs.create(job)
    assert jobs.get(job.id) == job
    assert jobs.transition(job.id, from_statuses=("QUEUED",), to_status=JobStatus.CANCELLED, error_code="cancelled")
    assert not jobs.transition(job.id, from_statuses=("QUEUED", "IN_PROGRESS"), to_status=JobStatus.SUCCEEDED)
    assert fetch_job(jobs, job.id).status == "CANCELLED"
    # The database itself refuses a status the state machine does not know (a CHECK, or SQLite's triggers).
    with pytest.raises(IntegrityError):
        db.execute("UPDATE jobs SET status = ? WHERE id = ?", ("PAUSED", job.id))
    with pytest.raises(IntegrityError):
        jobs.create(make_job(video.id, status="DONE"))
    assert fetch_job(jobs, job.id).status == "CANCELLED"


def test_one_announcement_per_job_claimed_by_one_sender_and_sent_once(
    open_db: Callable[[], Database], db: Database, videos: VideoRepository, jobs: JobRepository, clock: Clock
) -> None:
    from chalicelib.domain.records import Announcement

    video = make_video()
    videos.add(video)
    job = make_job(video.id)
    jobs.create(job)
    first = Announcement(event_id=new_id("evt"), job_id=job.id, body='{"type":"job.failed"}', created_at=T0)
    assert jobs.add_announcement(first) is True
    assert jobs.add_announcement(Announcement(new_id("evt"), job.id, "{}", T0 + 1)) is False  # one per job
    with db.transaction():  # inside another transaction a refused one leaves the rest intact
        assert jobs.add_announcement(Announcement(new_id("evt"), job.id, "{}", T0 + 2)) is False
        jobs.transition(job.id, from_statuses=("QUEUED",), to_status="FAILED")
    assert fetch_job(jobs, job.id).status == "FAILED"

    claims: list[list[str]] = []
    barrier = threading.Barrier(3)

    def claim() -> None:
        repo = JobRepository(open_db(), clock)
        barrier.wait()
        claims.append([a.event_id for a in repo.claim_announcements(claimed_before_ms=0)])

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [[], [], [first.event_id]]  # exactly one sender got it
    [claimed] = [c for c in claims if c]
    assert jobs.claim_announcements(claimed_before_ms=0) == []
    clock.advance(120_000)
    [again] = jobs.claim_announcements(claimed_before_ms=clock.now - 60_000)  # its sender died: the sweeper's
    assert (again.event_id, again.body, again.claimed_at) == (claimed[0], first.body, clock.now)
    jobs.announcement_sent(first.event_id)
    clock.advance(120_000)
    assert jobs.claim_announcements(claimed_before_ms=clock.now) == []
    videos.delete(video.id)  # its announcement goes with it
    assert db.fetchone("SELECT COUNT(*) AS n FROM job_announcements WHERE job_id = ?", (job.id,)) == {"n": 0}


def test_webhook_secret_versions_start_at_one_and_rotate_per_owner(db: Database, clock: Clock) -> None:
    from chalicelib.adapters.webhook_secrets import WebhookSecretRepository

    secrets = WebhookSecretRepository(db, clock)
    owner = new_id("own")
    assert secrets.current(owner) == (1, None)
    assert secrets.rotate(owner) == 2
    clock.advance(5)
    assert secrets.rotate(owner) == 3
    assert secrets.current(owner) == (3, clock.now)
    assert secrets.current(new_id("own"))[0] == 1
    assert secrets.rotate(None) >= 2  # an unscoped stack's one secret
