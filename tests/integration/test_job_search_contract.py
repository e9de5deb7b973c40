"""Contract tests for GET /jobs's query (adapters.job_queries), the rows of multipart uploads and
upload-triggered intake (adapters.upload_repository), and intake's idempotence under concurrent deliveries,
on SQLite and on MySQL (MariaDB) alike."""

from __future__ import annotations

import functools
import threading
import uuid

from chalicelib.adapters.database import Database
from chalicelib.adapters.job_queries import JobQueries
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.adapters.upload_repository import IntakeRepository, UploadRepository
from chalicelib.config import Settings
from chalicelib.domain.records import Job
from chalicelib.domain.uploads import IntakeRecord, JobFilter, MultipartState
from chalicelib.service.intake import ObjectCreated, handle_object
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.storage import ObjectStore
from handpipe.local.aws import aws_clients, provision
from tests.support.databases import T0, Clock, Store, all_pages, make_job, make_video
from tests.support.paths import data_path


def _jobs(videos: VideoRepository, jobs: JobRepository) -> list[Job]:
    """Twelve jobs on three videos of two owners, some sharing a creation time (ties go by id)."""
    mine = [make_video(owner="ann"), make_video(owner="ann")]
    theirs = make_video(owner="bob")
    for video in (*mine, theirs):
        videos.add(video)
    made = []
    for n in range(12):
        video = theirs if n % 4 == 3 else mine[n % 2]
        job = make_job(
            video.id,
            owner=video.owner,
            created_at=T0 + (n // 2) * 1000,  # pairs share a millisecond
            updated_at=T0,
            status="SUCCEEDED" if n % 3 == 0 else "QUEUED",
            tag="batch-a" if n < 6 else "batch-b",
        )
        jobs.create(job)
        made.append(job)
    return made


def _newest_first(rows: list[Job]) -> list[str]:
    return [j.id for j in sorted(rows, key=lambda j: (j.created_at, j.id), reverse=True)]


def test_find_filters_by_owner_status_tag_video_and_time_newest_first(
    db: Database, videos: VideoRepository, jobs: JobRepository
) -> None:
    made = _jobs(videos, jobs)
    search = JobQueries(db)
    ann = [j for j in made if j.owner == "ann"]

    def ids(where: JobFilter, limit: int = 100) -> list[str]:
        return [j.id for j in search.find(where, limit=limit)]

    assert ids(JobFilter()) == _newest_first(made)
    assert ids(JobFilter(owner="ann")) == _newest_first(ann)
    assert ids(JobFilter(owner="nobody")) == []
    assert ids(JobFilter(owner="ann", status="SUCCEEDED")) == _newest_first([j for j in ann if j.status == "SUCCEEDED"])
    assert ids(JobFilter(owner="ann", tag="batch-b")) == _newest_first([j for j in ann if j.tag == "batch-b"])
    video = ann[0].video_id
    assert ids(JobFilter(owner="ann", video_id=video)) == _newest_first([j for j in ann if j.video_id == video])
    since = T0 + 3000
    assert ids(JobFilter(owner="ann", created_after=since)) == _newest_first([j for j in ann if j.created_at >= since])
    both = JobFilter(owner="ann", tag="batch-a", status="QUEUED", created_after=T0 + 1000)
    expected = [j for j in ann if j.tag == "batch-a" and j.status == "QUEUED" and j.created_at >= T0 + 1000]
    assert ids(both) == _newest_first(expected) and expected


def _ann_page(search: JobQueries, limit: int, after: tuple[int, str] | None) -> list[Job]:
    return search.find(JobFilter(owner="ann"), limit=limit, after=after)


def test_find_pages_by_keyset_without_gaps_or_repeats(
    db: Database, videos: VideoRepository, jobs: JobRepository
) -> None:
    made = _jobs(videos, jobs)
    search = JobQueries(db)
    for limit in (1, 2, 5):
        paged = all_pages(functools.partial(_ann_page, search, limit), limit)
        assert [j.id for j in paged] == _newest_first([j for j in made if j.owner == "ann"])
    assert search.find(JobFilter(owner="ann"), limit=3)[0] == max(
        (j for j in made if j.owner == "ann"), key=lambda j: (j.created_at, j.id)
    )


def test_the_multipart_upload_of_a_video_is_kept_until_completed_once(
    db: Database, videos: VideoRepository, clock: Clock
) -> None:
    video = make_video(status="REGISTERED", size_bytes=12 * 1024**2)
    videos.add(video)
    uploads = UploadRepository(db, clock)
    assert uploads.get(video.id) is None
    long_id = "u" * 1000  # S3's upload ids are long and opaque
    uploads.begin(video.id, long_id, 5 * 1024**2)
    assert uploads.get(video.id) == MultipartState(long_id, 5 * 1024**2)
    assert not uploads.complete(video.id, "another-upload", 1)
    clock.advance()
    assert uploads.complete(video.id, long_id, 12_000_000)
    assert not uploads.complete(video.id, long_id, 12_000_000)  # a second complete finds it done
    done = videos.get(video.id)
    assert done is not None and (done.status, done.size_bytes, done.updated_at) == ("UPLOADED", 12_000_000, T0 + 1000)
    assert uploads.get(video.id) is None


def test_an_object_version_is_recorded_once(db: Database, videos: VideoRepository) -> None:
    video = make_video(s3_key="incoming/ann/a.mp4")
    videos.add(video)
    intake = IntakeRepository(db)
    record = IntakeRecord("a" * 64, video.s3_key, "v" * 1024, video.id, None, T0)
    assert not intake.registered_video(video.id)
    assert intake.add(record)
    assert not intake.add(IntakeRecord("a" * 64, video.s3_key, "other", video.id, "job_x", T0))
    assert intake.get("a" * 64) == record and intake.get("b" * 64) is None
    assert intake.registered_video(video.id)


def test_concurrent_deliveries_of_one_notification_register_one_video_and_one_job(
    store: Store, moto_endpoint: str
) -> None:
    """Two consumers handle the same S3 record at once, each on its own connection (as two Lambdas would):
    the unique key and object_intake's primary key let exactly one register it, on SQLite and MySQL alike."""
    s3, sqs = aws_clients(moto_endpoint)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    resources = provision(s3, sqs, bucket=f"{prefix}-bucket", prefix=prefix)
    key = "incoming/ann/clip.mkv"
    s3.put_object(Bucket=resources.bucket, Key=key, Body=data_path("videos/asl_thanks_two_hands.mkv").read_bytes())
    settings = Settings(
        bucket=resources.bucket,
        jobs_queue_url=resources.queue_urls["jobs"],
        work_queue_url=resources.queue_urls["work"],
        db_url="unused: the database is injected",
    )
    record = ObjectCreated(resources.bucket, key, 125_601, "etag", "version-1", "ObjectCreated:Put")
    start = threading.Barrier(4)
    answers: list[str] = []

    def deliver() -> None:
        db = store.open()
        start.wait()
        answers.append(
            handle_object(
                VideoRepository(db),
                JobRepository(db),
                IntakeRepository(db),
                ObjectStore(s3, resources.bucket),
                MessageQueue(sqs, resources.queue_urls["jobs"]),
                settings,
                record,
            )
        )

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 4 and sum(a.startswith("registered") for a in answers) == 1, answers
    assert all("concurrent delivery" in a or "redelivered" in a for a in answers if not a.startswith("registered"))
    assert store.db.fetchone("SELECT COUNT(*) AS n FROM videos WHERE s3_key = ?", (key,)) == {"n": 1}
    assert store.db.fetchone("SELECT COUNT(*) AS n FROM jobs") == {"n": 1}
    assert store.db.fetchone("SELECT COUNT(*) AS n FROM object_intake") == {"n": 1}
