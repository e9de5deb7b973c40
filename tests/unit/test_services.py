"""The video, job and orchestration services against the in-memory fakes: every rule the API and the
queue consumers apply, in milliseconds (the same flows on real adapters are in tests/integration)."""

from __future__ import annotations

import pytest

from chalicelib.service.errors import Conflict, Forbidden, InvalidInput, NotFound, TooLarge
from chalicelib.service.jobs import job_result
from chalicelib.service.orchestration import finish_if_complete, plan_job, sweep
from chalicelib.service.videos import delete_video, get_video, list_videos, register_video
from chalicelib.service.views import job_view
from chalicelib.shared.contracts import (
    SEGMENT_FAILED,
    SEGMENT_PROGRESS,
    JobRequested,
    ProbeRequest,
    RenderRequest,
    SegmentEvent,
    WorkItem,
    part_key,
    picture_key,
    result_key,
)
from chalicelib.shared.results import merge_parts
from tests.fakes import QueueDown
from tests.unit.world import PROBED, World, make_part

# ------------------------------------------------------------------------------------ videos


def test_a_registered_video_gets_an_upload_url_for_its_own_key() -> None:
    world = World()
    view = world.register(filename="My Take (1).MP4", size=1234)
    assert view["status"] == "REGISTERED" and view["filename"] == "My_Take_1.mp4"
    assert view["s3_key"] == f"videos/{view['id']}/My_Take_1.mp4"
    assert view["upload"]["headers"] == {"Content-Type": "video/mp4", "Content-Length": "1234"}
    assert world.video(view["id"]).owner == "alice"


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ({"filename": "a.txt", "size_bytes": 1}, InvalidInput, "filename must end in"),
        ({"filename": "a.mp4"}, InvalidInput, "size_bytes is required"),
        ({"filename": "a.mp4", "size_bytes": 0}, InvalidInput, "positive whole number"),
        ({"filename": "a.mp4", "size_bytes": 3 * 1024**3}, TooLarge, "over the limit"),
        ({"filename": "a.mp4", "size_bytes": 1, "colour": "red"}, InvalidInput, "unknown field(s): colour"),
    ],
)
def test_a_bad_registration_is_refused_with_the_reason(body: dict[str, object], error: type, fragment: str) -> None:
    world = World()
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        register_video(world.videos, world.objects, world.settings, body, "alice")
    assert world.tables.videos == {}


def test_registering_by_key_only_under_the_callers_prefix_and_one_video_per_key() -> None:
    world = World()
    register = lambda key, owner="alice": register_video(  # noqa: E731
        world.videos, world.objects, world.settings, {"s3_key": key}, owner
    )
    with pytest.raises(Forbidden, match="under incoming/alice/"):  # another owner's object
        register("incoming/bob/a.mp4")
    with pytest.raises(Conflict, match="put it there first"):
        register("incoming/alice/a.mp4")
    world.store.put_bytes("incoming/alice/empty.mp4", b"", "video/mp4")
    with pytest.raises(InvalidInput, match="is empty"):
        register("incoming/alice/empty.mp4")
    world.store.put_bytes("incoming/alice/a.mp4", b"x" * 10, "video/mp4")
    view = register("incoming/alice/a.mp4")
    assert view["status"] == "UPLOADED" and view["size_bytes"] == 10 and "upload" not in view
    with pytest.raises(Conflict, match="one video per key"):
        register("incoming/alice/a.mp4")
    assert len(world.tables.videos) == 1


def test_callers_see_only_their_own_videos() -> None:
    world = World()
    mine = world.register("alice")
    theirs = world.register("bob")
    assert get_video(world.videos, mine["id"], "alice").id == mine["id"]
    with pytest.raises(NotFound):
        get_video(world.videos, mine["id"], "bob")
    with pytest.raises(NotFound):
        get_video(world.videos, "vid_not-an-id", "alice")
    listed = list_videos(world.videos, status=None, limit=10, next_token=None, owner="bob")
    assert [v["id"] for v in listed["videos"]] == [theirs["id"]]


def test_videos_list_newest_first_by_pages_and_by_status() -> None:
    world = World()
    made = [world.register(filename=f"t{n}.mp4")["id"] for n in range(5)]
    world.fake_videos.set_status(made[1], "FAILED")
    seen: list[str] = []
    token = None
    while True:
        page = list_videos(world.videos, status=None, limit=2, next_token=token, owner="alice")
        seen += [v["id"] for v in page["videos"]]
        token = page["next_token"]
        if token is None:
            break
    assert seen == made[::-1]
    failed = list_videos(world.videos, status="FAILED", limit=10, next_token=None, owner="alice")
    assert [v["id"] for v in failed["videos"]] == [made[1]]
    with pytest.raises(InvalidInput, match="status must be one of"):
        list_videos(world.videos, status="GONE", limit=10, next_token=None)
    with pytest.raises(InvalidInput, match="next_token is not valid"):
        list_videos(world.videos, status=None, limit=10, next_token="nonsense")


def test_delete_is_refused_while_a_job_runs_then_removes_exactly_what_the_video_owns() -> None:
    world = World()
    world.store.put_bytes("incoming/alice/a.mp4", b"x" * 10, "video/mp4")
    world.store.put_bytes("incoming/alice/a.mp4.bak", b"x" * 10, "video/mp4")
    video = register_video(world.videos, world.objects, world.settings, {"s3_key": "incoming/alice/a.mp4"}, "alice")
    job, _ = world.trigger(video["id"])
    world.store.put_result(result_key(video["id"], job["id"]), {"frames": []})
    with pytest.raises(Conflict, match="queued or running"):
        delete_video(world.videos, world.jobs, world.objects, video["id"], "alice")
    assert world.video(video["id"]).status == "UPLOADED"  # a refused delete leaves the video as it was
    world.fake_jobs.transition(job["id"], from_statuses=("QUEUED",), to_status="FAILED")
    with pytest.raises(NotFound):
        delete_video(world.videos, world.jobs, world.objects, video["id"], "bob")
    done = delete_video(world.videos, world.jobs, world.objects, video["id"], "alice")
    assert done == {"deleted": video["id"], "objects_removed": 2}
    assert set(world.store.objects) == {"incoming/alice/a.mp4.bak"}
    assert world.tables.videos == {} and world.tables.jobs == {}


def test_a_video_being_deleted_takes_no_new_job() -> None:
    world = World()
    video = world.uploaded()
    assert world.fake_videos.begin_delete(video["id"]) == 0
    with pytest.raises(Conflict, match="being deleted"):
        world.trigger(video["id"])
    assert world.tables.jobs == {} and world.jobs_queue.sent == []


# ------------------------------------------------------------------------------------ jobs


def test_a_job_is_queued_once_per_client_token() -> None:
    world = World()
    video = world.uploaded()
    first, created = world.trigger(video["id"], client_token="tok-1", options={"num_hands": 1})
    again, created_again = world.trigger(video["id"], client_token="tok-1", options={"num_hands": 1})
    assert (created, created_again) == (True, False) and again["id"] == first["id"]
    assert world.jobs_queue.sent == [JobRequested(job_id=first["id"], video_id=video["id"])]
    assert world.video(video["id"]).status == "UPLOADED"
    with pytest.raises(Conflict, match="with other options"):
        world.trigger(video["id"], client_token="tok-1", options={"num_hands": 2})
    assert len(world.tables.jobs) == 1


def test_a_job_needs_the_file_and_respects_the_limits() -> None:
    world = World().with_settings(max_active_jobs_per_video=2)
    video = world.register()
    with pytest.raises(Conflict, match="has not been uploaded yet"):
        world.trigger(video["id"])
    world.store.put_bytes(video["s3_key"], b"v", "video/mp4")
    with pytest.raises(InvalidInput, match="options.end_ms must be at most"):
        world.trigger(video["id"], options={"end_ms": world.settings.max_duration_ms + 1})
    with pytest.raises(InvalidInput, match="options.model_uri must be an s3:// URI under s3://fake-bucket/models/"):
        world.trigger(video["id"], options={"model_uri": "s3://elsewhere/models/x.task"})
    with pytest.raises(InvalidInput, match="client_token may hold only"):
        world.trigger(video["id"], client_token="no spaces")
    world.trigger(video["id"])
    world.trigger(video["id"])
    with pytest.raises(Conflict, match="already has 2 jobs queued or running"):
        world.trigger(video["id"])
    with pytest.raises(NotFound):
        world.trigger(video["id"], owner="bob")
    assert len(world.tables.jobs) == 2


def test_an_empty_range_makes_a_job_failed_at_once_and_queues_nothing() -> None:
    world = World()
    video = world.uploaded()
    view, created = world.trigger(video["id"], options={"start_ms": 5000, "end_ms": 5000})
    assert created and view["status"] == "FAILED" and view["error"]["code"] == "empty_range"
    assert "holds no frame" in view["error"]["message"] and view["timings"]["finished_at"] is not None
    assert world.jobs_queue.sent == []


def test_a_job_that_cannot_be_queued_is_taken_back() -> None:
    world = World()
    video = world.uploaded()
    world.jobs_queue.down = True
    with pytest.raises(QueueDown):
        world.trigger(video["id"])
    assert world.tables.jobs == {}
    assert world.video(video["id"]).status == "REGISTERED"


# ------------------------------------------------------------------------------------ planning


def test_a_job_of_unknown_length_is_probed_then_split_and_dispatched_within_the_cap() -> None:
    world = World().with_settings(max_in_flight_per_job=2)
    video = world.uploaded()
    view, _ = world.trigger(video["id"])
    assert world.plan(view["id"]) == "probing"
    [probe] = world.work_queue.take()
    assert isinstance(probe, ProbeRequest) and probe.video_key == video["s3_key"]
    assert world.probed(view["id"]) == "planned 3 segment(s), dispatched 2"
    job = world.job(view["id"])
    assert job.status == "IN_PROGRESS" and job.segments_total == 3 and job.frames_total == 1250
    assert world.video(video["id"]).status == "PROCESSING"
    assert world.video(video["id"]).metadata == PROBED
    items = world.work_items()
    assert [(i.segment, i.options.start_ms, i.options.end_ms, i.warmup_ms) for i in items] == [
        (0, None, 20_000, 0),
        (1, 20_000, 40_000, world.settings.warmup_ms),
    ]
    assert world.fake_jobs.in_flight(job.id) == 2
    # a redelivered request plans nothing twice and sends nothing past the cap
    assert world.plan(job.id) == "already planned; dispatched 0"
    assert world.probed(job.id) == "already planned"
    assert len(world.tables.segments) == 3 and world.work_queue.sent == []


def test_a_job_with_its_own_end_is_planned_without_a_probe() -> None:
    world = World()
    video = world.uploaded()
    view, _ = world.trigger(video["id"], options={"start_ms": 1000, "end_ms": 30_000})
    assert world.plan(view["id"]) == "planned 2 segment(s), dispatched 2"
    assert [(i.options.start_ms, i.options.end_ms) for i in world.work_items()] == [(1000, 21_000), (21_000, 30_000)]


def test_plans_over_the_limits_fail_their_job_with_every_reason() -> None:
    world = World().with_settings(max_pixels=100_000)
    job = world.uploaded()
    view, _ = world.trigger(job["id"])
    world.plan(view["id"])
    assert world.probed(view["id"]) == "failed"
    failed = world.job(view["id"])
    assert failed.status == "FAILED" and failed.error_code == "limit_exceeded"
    assert "640x480 are over the limit of 100000 pixels" in (failed.error or "")
    assert world.video(failed.video_id).status == "FAILED"
    # a second job on the probed video skips the probe and is checked all the same
    second, _ = world.trigger(job["id"])
    assert world.plan(second["id"]) == "failed" and world.job(second["id"]).error_code == "limit_exceeded"

    many = World().with_settings(max_segments_per_job=2)
    assert many.running_job().status == "FAILED"
    assert "would need 3 segments, over the limit of 2" in (many.job(next(iter(many.tables.jobs))).error or "")


def test_requests_for_jobs_gone_or_finished_change_nothing() -> None:
    world = World()
    assert (
        plan_job(
            world.videos, world.jobs, world.work_q, world.settings, JobRequested("job_" + "0" * 32, "vid_" + "0" * 32)
        )
        == "ignored"
    )
    video = world.uploaded()
    view, _ = world.trigger(video["id"], options={"start_ms": 3, "end_ms": 2})
    assert world.plan(view["id"]) == "already finished"
    event = SegmentEvent(type=SEGMENT_PROGRESS, job_id="job_" + "1" * 32, video_id=video["id"], segment=0)
    assert world.event(event) == "ignored"


# ------------------------------------------------------------------------------------ events


def test_progress_counts_frames_and_a_single_segment_learns_its_total() -> None:
    world = World().with_settings(segment_ms=None)
    video = world.uploaded()
    view, _ = world.trigger(video["id"])
    assert world.plan(view["id"]) == "planned 1 segment(s), dispatched 1"
    progress = SegmentEvent(
        type=SEGMENT_PROGRESS,
        job_id=view["id"],
        video_id=video["id"],
        segment=0,
        frames_processed=40,
        extra={"frames_expected": 400},
    )
    assert world.event(progress) == "progress"
    job = world.job(view["id"])
    assert (job.frames_done, job.frames_total) == (40, 400)
    assert job_view(job)["progress"]["percent"] == 10.0
    world.event(
        SegmentEvent(type=SEGMENT_PROGRESS, job_id=view["id"], video_id=video["id"], segment=0, frames_processed=20)
    )
    assert world.job(view["id"]).frames_done == 40  # progress never goes back


def test_the_last_part_in_succeeds_the_job_and_asks_for_its_artifacts() -> None:
    world = World().with_settings(max_in_flight_per_job=2)
    job = world.running_job(options={"annotated_video": True})
    first, second = world.work_items()
    assert world.succeed(first) == "waiting for parts"
    [third] = world.work_items()  # the freed slot goes to the job's waiting segment at once
    assert third.segment == 2
    assert world.succeed(second) == "waiting for parts"
    assert world.succeed(second) == "waiting for parts"  # a repeated event counts nothing twice
    assert world.job(job.id).segments_done == 2
    assert world.succeed(third) == "succeeded"
    done = world.job(job.id)
    assert done.status == "SUCCEEDED" and done.result_key == result_key(job.video_id, job.id)
    assert done.frames_total == 1250 and done.summary is not None and done.summary["frames_with_hands"] == 625
    assert world.video(job.video_id).status == "PROCESSED"
    # SUCCEEDED from the parts alone: the merged result is the artifact step's to write, asked for here
    assert world.store.head(done.result_key) is None
    [render] = world.work_queue.take()
    assert isinstance(render, RenderRequest) and render.annotated_video and render.result_key == done.result_key
    assert render.segments == 3
    assert world.succeed(third) == "already finished"
    answer = job_result(world.jobs, world.objects, world.settings, job.id, "alice")
    assert answer["artifacts"] == {"result": False, "insights": False, "exports": False, "pictures": False}
    assert answer["result"]["url"] is None and answer["summary"]["frames_with_hands"] == 625
    # what the artifact step writes first: the merge of the parts, whose summary is the job's
    parts = [world.store.get_result(part_key(job.video_id, job.id, i)) for i in range(3)]
    merged = merge_parts(parts)
    assert [f["index"] for f in merged["frames"]] == list(range(1250))
    assert merged["summary"] == {k: v for k, v in done.summary.items() if k not in ("stats", "decode")}
    world.store.put_result(done.result_key, merged)
    # the result answers with signed URLs, pictures null until a worker has drawn them
    world.store.put_bytes(picture_key(job.video_id, job.id, "timeline"), b"png", "image/png")
    answer = job_result(world.jobs, world.objects, world.settings, job.id, "alice")
    assert answer["artifacts"]["result"] and not answer["artifacts"]["pictures"] and answer["result"]["url"]
    assert answer["pictures"]["timeline"] and answer["pictures"]["contact_sheet"] is None
    with pytest.raises(NotFound):
        job_result(world.jobs, world.objects, world.settings, job.id, "bob")


def test_a_failed_segment_fails_its_job_and_its_slots_go_to_a_waiting_job() -> None:
    world = World().with_settings(max_in_flight=3)
    first = world.running_job()
    assert len(world.work_items()) == 3
    waiting = world.running_job()
    assert world.work_items() == []  # the global cap is full
    item_failed = SegmentEvent(
        type=SEGMENT_FAILED,
        job_id=first.id,
        video_id=first.video_id,
        segment=1,
        error="the video cannot be decoded",
        error_code="decode_error",
    )
    assert world.event(item_failed) == "failed"
    failed = world.job(first.id)
    assert failed.status == "FAILED" and failed.error_code == "decode_error"
    assert failed.error == "segment 1: the video cannot be decoded"
    assert world.fake_jobs.segments(first.id)[1].status == "FAILED"
    assert world.video(first.video_id).status == "FAILED"
    assert {i.job_id for i in world.work_items()} == {waiting.id}
    assert world.fake_jobs.in_flight() == 3


def test_parts_that_do_not_form_one_video_fail_the_job_with_a_merge_error() -> None:
    world = World()
    job = world.running_job()
    items = world.work_items()
    for item in items[:-1]:
        world.succeed(item)
    last = items[-1]
    short = make_part(WorkItem(**{**vars(last), "options": last.options.with_range(45_000, None)}))
    world.store.put_result(last.part_key, short)  # starts 5 s after the segment before it ends
    world.fake_jobs.complete_segment(job.id, last.segment, frames_processed=1, frames_with_hands=0)
    outcome = finish_if_complete(world.videos, world.jobs, world.objects, job.id, world.work_q, world.settings)
    assert outcome == "failed"
    failed = world.job(job.id)
    assert failed.status == "FAILED" and failed.error_code == "merge_error"
    assert "do not form one video" in (failed.error or "") and "do not meet" in (failed.error or "")
    assert world.video(job.video_id).status == "FAILED" and failed.result_key is None


def test_freed_capacity_goes_round_robin_across_owners() -> None:
    world = World().with_settings(max_in_flight=2, max_in_flight_per_job=2)
    hog = world.running_job("alice")
    assert len(world.work_items()) == 2
    queued_first = [world.running_job("alice"), world.running_job("alice")]
    late = world.running_job("bob")
    assert world.work_items() == []
    for item in [i for i in world.fake_jobs.segments(hog.id) if i.dispatched_at is not None]:
        world.fake_jobs.complete_segment(hog.id, item.segment_index, frames_processed=1, frames_with_hands=0)
    assert (
        sweep(
            world.videos, world.jobs, world.objects, world.jobs_q, world.work_q, world.settings, now=world.clock.now
        ).dispatched
        == 2
    )
    # alice's three jobs do not take both slots: her oldest waiting one (the hog's last segment) gets one,
    # bob's only job the other
    sent = world.work_items()
    assert sorted(i.job_id for i in sent) == sorted([hog.id, late.id])
    assert not {j.id for j in queued_first} & {i.job_id for i in sent}


def test_a_send_that_fails_gives_the_claims_back() -> None:
    world = World().with_settings(segment_ms=None)
    video = world.uploaded()
    view, _ = world.trigger(video["id"])
    world.work_queue.down = True
    with pytest.raises(QueueDown):
        world.plan(view["id"])
    assert world.fake_jobs.in_flight() == 0 and world.fake_jobs.segments(view["id"])[0].dispatch_count == 0
    world.work_queue.down = False
    assert world.plan(view["id"]) == "already planned; dispatched 1"


# ------------------------------------------------------------------------------------ the sweeper


def test_the_sweeper_resends_a_lost_segment_then_fails_its_job_as_lost() -> None:
    world = World().with_settings(max_dispatches=2)
    job = world.running_job()
    world.work_items()
    silence = world.settings.segment_silence_s * 1000
    world.clock.advance(silence + 1)
    report = world.sweep(now=world.clock.now + silence + 1)
    assert report.resent == [job.id] * 3 and report.dispatched == 3
    assert [s.dispatch_count for s in world.fake_jobs.segments(job.id)] == [2, 2, 2]
    assert len(world.work_items()) == 3
    world.clock.advance(silence + 1)
    report = world.sweep(now=world.clock.now + silence + 1)
    assert report.failed == [job.id]
    lost = world.job(job.id)
    assert lost.status == "FAILED" and lost.error_code == "worker_lost" and "2 times" in (lost.error or "")


def test_the_sweeper_asks_again_for_a_quiet_queued_job_and_fails_a_stuck_one() -> None:
    world = World()
    video = world.uploaded()
    view, _ = world.trigger(video["id"])
    world.jobs_queue.take()
    created = world.job(view["id"]).created_at
    silence = world.settings.segment_silence_s * 1000
    report = world.sweep(now=created + silence + 1)
    assert report.requested == [view["id"]] and report.failed == []
    assert world.jobs_queue.take() == [JobRequested(job_id=view["id"], video_id=video["id"])]
    report = world.sweep(now=created + world.settings.stuck_after_s * 1000 + 1)
    assert report.failed == [view["id"]]
    stuck = world.job(view["id"])
    assert stuck.status == "FAILED" and stuck.error_code == "stuck"
    assert world.video(video["id"]).status == "FAILED"


def test_the_sweeper_merges_a_job_whose_last_event_was_lost() -> None:
    world = World()
    job = world.running_job()
    items = world.work_items()
    for item in items:
        world.store.put_result(item.part_key, make_part(item))
        world.fake_jobs.complete_segment(job.id, item.segment, frames_processed=1, frames_with_hands=0)
    silence = world.settings.segment_silence_s * 1000
    report = world.sweep(now=world.clock.now + silence + 1)
    assert report.finished == [job.id] and world.job(job.id).status == "SUCCEEDED"
    assert world.sweep(now=world.clock.now + silence + 1).finished == []


def test_the_sweeper_never_fails_a_job_waiting_for_capacity() -> None:
    world = World().with_settings(max_in_flight=1)
    busy = world.running_job()
    waiting = world.running_job()
    world.work_items()
    far = world.clock.now + world.settings.stuck_after_s * 1000 * 10
    world.fake_jobs.record_progress(busy.id, 0, 5)  # the running segment keeps being heard of
    report = world.sweep(now=far)
    assert waiting.id not in report.failed and world.job(waiting.id).status == "IN_PROGRESS"
