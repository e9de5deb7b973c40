"""The fakes are honest: the same assertions run against tests/fakes.py's repositories and against the
real ones on SQLite and MariaDB, for every repository behaviour the services' unit tests rely on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from chalicelib.adapters.database import Database, IntegrityError
from chalicelib.adapters.job_repository import JobRepository
from chalicelib.adapters.migrations import upgrade
from chalicelib.adapters.repositories import VideoRepository
from chalicelib.domain.records import Announcement, Job, JobRefused
from tests.fakes import T0, Clock, FakeJobRepository, FakeVideoRepository, Tables
from tests.support.databases import make_job, make_segments, make_video


@dataclass
class Repos:
    videos: VideoRepository
    jobs: JobRepository
    clock: Clock


@pytest.fixture(params=["fake", "sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def repos(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repos]:
    clock = Clock(T0)
    if request.param == "fake":
        tables = Tables()
        yield Repos(
            cast(VideoRepository, FakeVideoRepository(tables, clock)),
            cast(JobRepository, FakeJobRepository(tables, clock)),
            clock,
        )
        return
    if request.param == "sqlite":
        db = Database.from_url(f"sqlite:///{tmp_path / 'contract.db'}")
        upgrade(db)
    else:
        db = request.getfixturevalue("mysql_session_db")
        with db.transaction():
            for table in ("job_announcements", "segments", "jobs", "videos"):
                db.execute(f"DELETE FROM {table}")
    yield Repos(VideoRepository(db, clock), JobRepository(db, clock), clock)
    if request.param == "sqlite":
        db.close()


def running(repos: Repos, owner: str | None, segments: int, created_at: int = T0) -> Job:
    video = make_video(owner=owner)
    repos.videos.add(video)
    job, _ = repos.jobs.create(
        make_job(video.id, status="IN_PROGRESS", owner=owner, segments_total=segments, created_at=created_at)
    )
    repos.jobs.add_segments(job.id, make_segments(job.id, segments))
    return job


def test_videos_one_per_key_scoped_by_owner_and_listed_newest_first(repos: Repos) -> None:
    made = [make_video(owner="alice", created_at=T0 + n) for n in range(3)]
    for video in made:
        repos.videos.add(video)
    with pytest.raises(IntegrityError):
        repos.videos.add(make_video(s3_key=made[0].s3_key))
    assert repos.videos.find_by_key(made[0].s3_key) == made[0]
    assert repos.videos.get(made[0].id, owner="bob") is None and repos.videos.get(made[0].id, owner="alice")
    assert [v.id for v in repos.videos.list(limit=2)] == [made[2].id, made[1].id]
    assert [v.id for v in repos.videos.list(limit=2, after=(made[1].created_at, made[1].id))] == [made[0].id]
    assert repos.videos.set_status(made[0].id, "FAILED", expected=("READY",))
    assert not repos.videos.set_status(made[0].id, "PROCESSED", expected=("READY",))
    assert [v.id for v in repos.videos.list(status="FAILED")] == [made[0].id]
    assert repos.videos.list(owner="bob") == []


def test_jobs_per_video_token_replay_caps_and_deletion(repos: Repos) -> None:
    video = make_video()
    repos.videos.add(video)
    first, created = repos.jobs.create_for_video(make_job(video.id, client_token="t"), max_active=2)
    again, created_again = repos.jobs.create_for_video(make_job(video.id, client_token="t"), max_active=2)
    assert created and not created_again and again.id == first.id
    repos.jobs.create_for_video(make_job(video.id), max_active=2)
    with pytest.raises(JobRefused) as busy:
        repos.jobs.create_for_video(make_job(video.id), max_active=2)
    assert busy.value.reason == "busy" and busy.value.active == 2
    with pytest.raises(JobRefused, match="missing"):
        repos.jobs.create_for_video(make_job("vid_" + "0" * 32), max_active=2)
    assert repos.videos.begin_delete(video.id) == 2
    for job in repos.jobs.list_for_video(video.id):
        assert repos.jobs.transition(job.id, from_statuses=("QUEUED",), to_status="FAILED")
    assert not repos.jobs.transition(first.id, from_statuses=("QUEUED",), to_status="SUCCEEDED")
    assert repos.videos.begin_delete(video.id) == 0
    assert repos.videos.get(video.id).status == "DELETING"  # type: ignore[union-attr]
    with pytest.raises(JobRefused, match="deleting"):
        repos.jobs.create_for_video(make_job(video.id), max_active=2)
    assert repos.videos.delete(video.id) and repos.jobs.get(first.id) is None
    assert repos.videos.begin_delete(video.id) is None


def test_a_transaction_that_raises_changes_nothing(repos: Repos) -> None:
    job = running(repos, "alice", 1)
    with pytest.raises(RuntimeError), repos.jobs.transaction():
        repos.jobs.transition(job.id, from_statuses=("IN_PROGRESS",), to_status="FAILED")
        repos.videos.set_status(job.video_id, "FAILED")
        raise RuntimeError("cut short")
    assert repos.jobs.get(job.id).status == "IN_PROGRESS"  # type: ignore[union-attr]
    assert repos.videos.get(job.video_id).status == "READY"  # type: ignore[union-attr]


def test_claims_respect_the_caps_and_segment_events_count_once(repos: Repos) -> None:
    job = running(repos, "alice", 3)
    repos.jobs.add_segments(job.id, make_segments(job.id, 3))  # a redelivered plan adds nothing
    claimed = repos.jobs.claim_within_caps(job.id, per_job=2, total=10)
    assert [s.segment_index for s in claimed] == [0, 1] and all(s.dispatch_count == 1 for s in claimed)
    assert repos.jobs.claim_within_caps(job.id, per_job=2, total=10) == []
    repos.jobs.release_claim(job.id, 1)
    assert repos.jobs.in_flight(job.id) == 1 and repos.jobs.segments(job.id)[1].dispatch_count == 0
    assert repos.jobs.record_progress(job.id, 0, 10) and not repos.jobs.record_progress(job.id, 0, 5)
    assert repos.jobs.complete_segment(job.id, 0, frames_processed=20, frames_with_hands=7)
    assert not repos.jobs.complete_segment(job.id, 0, frames_processed=99, frames_with_hands=99)
    assert repos.jobs.fail_segment(job.id, 2, error="boom") and not repos.jobs.fail_segment(job.id, 2, error="again")
    stored = repos.jobs.get(job.id)
    assert stored is not None and (stored.segments_done, stored.frames_done, stored.frames_with_hands) == (1, 20, 7)
    assert [s.status for s in repos.jobs.segments(job.id)] == ["SUCCEEDED", "PENDING", "FAILED"]
    repos.jobs.transition(job.id, from_statuses=("IN_PROGRESS",), to_status="FAILED")
    assert repos.jobs.claim_within_caps(job.id, per_job=2, total=10) == []  # an ended job sends nothing


def test_waiting_jobs_come_round_robin_by_owner(repos: Repos) -> None:
    a1, a2 = running(repos, "alice", 2, T0), running(repos, "alice", 2, T0 + 1)
    b1 = running(repos, "bob", 2, T0 + 2)
    repos.jobs.claim_within_caps(a1.id, per_job=1, total=10)
    # each owner's oldest first, bob (nothing on workers) ahead of alice within the round
    assert repos.jobs.jobs_waiting_for_dispatch() == [(b1.id, "bob"), (a1.id, "alice"), (a2.id, "alice")]
    assert repos.jobs.in_flight() == 1


def test_silent_segments_are_given_back_and_finished_jobs_found(repos: Repos) -> None:
    job = running(repos, None, 2)
    [sent] = repos.jobs.claim_within_caps(job.id, per_job=1, total=10)
    repos.clock.advance(10_000)
    [silent] = repos.jobs.silent_segments(since_ms=repos.clock.now)
    assert (silent.segment_index, silent.dispatched_at) == (0, sent.dispatched_at)
    assert not repos.jobs.requeue_segment(job.id, 0, dispatched_at=T0 - 1)
    assert repos.jobs.requeue_segment(job.id, 0, dispatched_at=silent.dispatched_at or 0)
    assert repos.jobs.segments(job.id)[0].dispatched_at is None and repos.jobs.in_flight() == 0
    for index in (0, 1):
        repos.jobs.complete_segment(job.id, index, frames_processed=1, frames_with_hands=0)
    assert repos.jobs.finished_unmerged(updated_before_ms=repos.clock.now + 1) == [job.id]
    assert repos.jobs.finished_unmerged(updated_before_ms=repos.clock.now) == []
    queued = make_job(job.video_id, created_at=T0 - 5)
    repos.jobs.create(queued)
    assert [j.id for j in repos.jobs.queued_before(created_before_ms=T0)] == [queued.id]


def test_transition_sets_only_the_fields_it_may(repos: Repos) -> None:
    job = running(repos, None, 1)
    summary: dict[str, Any] = {"frames_processed": 3}
    assert repos.jobs.transition(
        job.id, from_statuses=("IN_PROGRESS",), to_status="SUCCEEDED", summary=summary, result_key="r", finished_at=T0
    )
    done = repos.jobs.get(job.id)
    assert done is not None and (done.status, done.summary, done.result_key) == ("SUCCEEDED", summary, "r")
    with pytest.raises(TypeError):
        repos.jobs.transition(job.id, from_statuses=("SUCCEEDED",), to_status="FAILED", owner="x")  # type: ignore[call-arg]


def test_announcements_one_per_job_claimed_once_reclaimed_when_stale_and_gone_with_the_job(repos: Repos) -> None:
    first, second = running(repos, "alice", 1), running(repos, "bob", 1, created_at=T0 + 5)
    a = Announcement(event_id="evt_" + "a" * 32, job_id=first.id, body='{"n":1}', created_at=T0)
    b = Announcement(event_id="evt_" + "b" * 32, job_id=second.id, body='{"n":2}', created_at=T0 + 1)
    assert repos.jobs.add_announcement(a) and repos.jobs.add_announcement(b)
    assert not repos.jobs.add_announcement(Announcement("evt_" + "c" * 32, first.id, "{}", T0 + 2))
    claimed = repos.jobs.claim_announcements(claimed_before_ms=0, limit=1)
    assert [(c.event_id, c.body, c.claimed_at) for c in claimed] == [(a.event_id, a.body, T0)]  # oldest first
    assert [c.event_id for c in repos.jobs.claim_announcements(claimed_before_ms=0)] == [b.event_id]
    assert repos.jobs.claim_announcements(claimed_before_ms=0) == []
    repos.jobs.announcement_sent(b.event_id)
    repos.clock.advance(60_000)
    assert [c.event_id for c in repos.jobs.claim_announcements(claimed_before_ms=repos.clock.now)] == [a.event_id]
    assert repos.jobs.delete(first.id)
    repos.clock.advance(60_000)
    assert repos.jobs.claim_announcements(claimed_before_ms=repos.clock.now) == []
