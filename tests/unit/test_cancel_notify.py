"""Cancel and job-end notifications over the fakes: a cancel's effects and races, one announcement per
job end, the notify queue's messages, signed deliveries, and the webhook URL policy with a resolver
injected in place of DNS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from chalicelib.adapters.webhooks import UnsafeWebhook, WebhookPolicy, WebhookSender
from chalicelib.service.cancel import cancel_job
from chalicelib.service.errors import Conflict, InvalidInput, NotFound
from chalicelib.service.jobs import create_job
from chalicelib.service.notifications import (
    MAX_SUMMARY_BYTES,
    TOPIC,
    WEBHOOK,
    NotifyMessage,
    announce_job_end,
    deliver_notification,
    job_end_event,
    retry_delay_s,
    send_announcements,
)
from chalicelib.service.notifications_secrets import derive_secret, rotate_webhook_secret, webhook_secret
from chalicelib.shared.cancellation import CancelCheck, cancel_marker_key
from chalicelib.shared.contracts import SEGMENT_FAILED, SEGMENT_PROGRESS, SegmentEvent
from chalicelib.shared.signatures import SIGNATURE_HEADER, verify_signature
from chalicelib.shared.states import JobStatus, VideoStatus
from tests.fakes import FakeMessageQueue
from tests.unit.world import World

PUBLIC = "93.184.215.14"


def resolver(table: Mapping[str, list[str]]) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        return list(table.get(host, []))

    return resolve


HOOKS = WebhookPolicy(resolver=resolver({"hooks.example.com": [PUBLIC]}))


class FakeVersions:
    def __init__(self) -> None:
        self.versions: dict[str | None, int] = {}

    def current(self, owner: str | None) -> tuple[int, int | None]:
        return self.versions.get(owner, 1), (1000 if owner in self.versions else None)

    def rotate(self, owner: str | None) -> int:
        self.versions[owner] = self.versions.get(owner, 1) + 1
        return self.versions[owner]


class FakeTopic:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, str | None]]] = []

    def publish(self, body: str, attributes: Mapping[str, str | None]) -> str:
        self.published.append((body, dict(attributes)))
        return f"sns-{len(self.published)}"


class FakeSender:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.posts.append((url, body, dict(headers)))
        status = self.statuses.pop(0)
        if status >= 300:
            raise RuntimeError(f"answered {status}")
        return status


def notify_trigger(world: World, video_id: str, url: str = "https://hooks.example.com/h", **body: Any) -> Any:
    return create_job(
        world.videos,
        world.jobs,
        world.objects,
        world.jobs_q,
        world.settings,
        video_id,
        {"notify": {"webhook_url": url}, **body},
        "alice",
        webhooks=HOOKS,
    )


def announced(world: World) -> list[dict[str, Any]]:
    return [json.loads(a.body) for a in world.tables.announcements.values()]


# ------------------------------------------------------------------------------------------ cancel


def test_cancelling_a_running_job_ends_it_stops_dispatch_and_announces_it() -> None:
    world = World().with_settings(max_in_flight_per_job=1)
    job = world.running_job(tag="batch-7")
    sent = world.work_items()
    assert len(sent) == 1 and job.segments_total == 3  # the other two wait for capacity

    view = cancel_job(world.videos, world.jobs, world.objects, job.id, owner="alice")

    assert view.status == JobStatus.CANCELLED and view.error_code == "cancelled" and view.finished_at
    assert world.store.head(cancel_marker_key(job.video_id, job.id)) is not None  # running segments look for it
    assert world.video(job.video_id).status == VideoStatus.UPLOADED  # no job of it ever finished
    assert world.fake_jobs.in_flight() == 0  # its slot is free at once
    # The running segment's last words change nothing, and nothing more is sent.
    assert world.succeed(sent[0]).startswith("ignored")
    assert world.event(
        SegmentEvent(type=SEGMENT_PROGRESS, job_id=job.id, video_id=job.video_id, segment=1, frames_processed=9)
    ).startswith("ignored")
    world.sweep(now=world.clock.advance(10**7))
    assert world.work_items() == [] and world.job(job.id).status == JobStatus.CANCELLED
    [event] = announced(world)
    assert event["type"] == "job.cancelled" and event["tag"] == "batch-7" and event["error"]["code"] == "cancelled"


def test_cancelling_a_queued_job_means_it_never_starts() -> None:
    world = World()
    video = world.uploaded()
    view, _ = world.trigger(video["id"])
    cancel_job(world.videos, world.jobs, world.objects, view["id"])
    assert world.plan(view["id"]) == "already finished"
    assert world.work_items() == [] and world.tables.segments == {}


def test_a_finished_job_cannot_be_cancelled_and_the_refusal_names_its_status() -> None:
    world = World()
    job = world.running_job()
    for item in world.work_items():
        world.succeed(item)
    assert world.job(job.id).status == JobStatus.SUCCEEDED
    with pytest.raises(Conflict, match="SUCCEEDED"):
        cancel_job(world.videos, world.jobs, world.objects, job.id)
    with pytest.raises(NotFound):
        cancel_job(world.videos, world.jobs, world.objects, job.id, owner="mallory")
    assert world.store.head(cancel_marker_key(job.video_id, job.id)) is None
    assert [e["type"] for e in announced(world)] == ["job.succeeded"]


def test_a_cancel_that_loses_to_the_last_segment_leaves_one_end_and_one_announcement() -> None:
    """The last segment's success merges the job between the cancel's read and its conditional move."""
    world = World()
    job = world.running_job()
    items = world.work_items()
    for item in items[:-1]:
        world.succeed(item)
    original = world.fake_jobs.transition

    def job_ends_first(job_id: str, **kwargs: Any) -> bool:
        if kwargs.get("to_status") == JobStatus.CANCELLED:
            world.fake_jobs.transition = original  # type: ignore[method-assign]
            world.succeed(items[-1])  # the racing consumer wins
        return original(job_id, **kwargs)

    world.fake_jobs.transition = job_ends_first  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="SUCCEEDED"):
        cancel_job(world.videos, world.jobs, world.objects, job.id)
    assert world.job(job.id).status == JobStatus.SUCCEEDED
    assert [e["type"] for e in announced(world)] == ["job.succeeded"]
    assert world.store.head(cancel_marker_key(job.video_id, job.id)) is None  # taken back


def test_a_cancel_that_wins_leaves_the_last_segment_nothing_to_finish() -> None:
    world = World()
    job = world.running_job()
    items = world.work_items()
    for item in items[:-1]:
        world.succeed(item)
    cancel_job(world.videos, world.jobs, world.objects, job.id)
    assert world.succeed(items[-1]).startswith("ignored")
    assert world.job(job.id).status == JobStatus.CANCELLED and world.job(job.id).result_key is None
    assert [e["type"] for e in announced(world)] == ["job.cancelled"]


def test_cancel_leaves_a_video_with_an_earlier_success_processed() -> None:
    world = World()
    done = world.running_job()
    for item in world.work_items():
        world.succeed(item)
    view, _ = world.trigger(done.video_id)
    world.plan(view["id"])
    world.probed(view["id"])
    assert world.video(done.video_id).status == VideoStatus.PROCESSING
    cancel_job(world.videos, world.jobs, world.objects, view["id"])
    assert world.video(done.video_id).status == VideoStatus.PROCESSED


def test_the_worker_s_cancel_check_asks_s3_at_most_once_per_interval() -> None:
    world = World()
    now = [0.0]
    check = CancelCheck(world.objects, "vid_x", "job_y", interval_s=2.0, clock=lambda: now[0])
    assert [check(), check(), check()] == [False, False, False] and check.checks == 1
    world.store.put_bytes(cancel_marker_key("vid_x", "job_y"), b"", "text/plain")
    assert check() is False  # not asked again yet
    now[0] = 2.5
    assert check() is True and check.checks == 2
    now[0] = 100.0
    assert check() is True and check.checks == 2  # once seen, never asked again


# ------------------------------------------------------------------------------------ announcements


def test_every_way_a_job_ends_is_announced_exactly_once() -> None:
    world = World()
    failed = world.running_job()
    item = world.work_items()[0]
    for _ in range(2):  # a redelivered failure
        world.event(
            SegmentEvent(
                type=SEGMENT_FAILED,
                job_id=failed.id,
                video_id=failed.video_id,
                segment=item.segment,
                error="cannot decode",
                error_code="not_video",
            )
        )
    empty = world.uploaded()
    world.trigger(empty["id"], options={"start_ms": 500, "end_ms": 100})  # FAILED as it is made
    events = sorted(announced(world), key=lambda e: e["job_id"])
    assert [e["type"] for e in events] == ["job.failed", "job.failed"]
    assert {e["error"]["code"] for e in events} == {"not_video", "empty_range"}
    assert announce_job_end(world.jobs, failed.id) is False  # a second call records nothing
    assert len(world.tables.announcements) == 2


def test_an_event_holds_the_agreed_fields_and_a_huge_summary_is_cut_down() -> None:
    world = World()
    job = world.running_job(tag="t")
    for item in world.work_items():
        world.succeed(item)
    [event] = announced(world)
    assert list(event) == ["type", "event_id", "job_id", "video_id", "status", "tag", "summary", "time"]
    assert event["status"] == "SUCCEEDED" and event["time"].endswith("Z") and event["event_id"].startswith("evt_")
    big = world.job(job.id).summary or {}
    huge = job_end_event(
        world.job(job.id).__class__(**{**vars(world.job(job.id)), "summary": {**big, "x": "y" * 10**6}}), "evt_1"
    )
    assert huge["summary"]["truncated"] is True and len(json.dumps(huge)) < 2 * MAX_SUMMARY_BYTES


def test_sending_announcements_queues_a_topic_and_a_webhook_message_once() -> None:
    world = World()
    video = world.uploaded()
    view, _ = notify_trigger(world, video["id"], tag="nightly")
    assert view["notify"] == {"webhook_url": "https://hooks.example.com/h"}
    cancel_job(world.videos, world.jobs, world.objects, view["id"])
    queue, versions = FakeMessageQueue(), FakeVersions()
    versions.rotate("alice")
    assert send_announcements(world.jobs, versions, queue) == 1  # type: ignore[arg-type]
    assert send_announcements(world.jobs, versions, queue) == 0  # type: ignore[arg-type]
    topic, webhook = queue.sent
    assert (topic.kind, webhook.kind) == (TOPIC, WEBHOOK)
    assert topic.body == webhook.body and topic.event_id == webhook.event_id
    assert (webhook.owner, webhook.status, webhook.tag, webhook.secret_version) == ("alice", "CANCELLED", "nightly", 2)
    assert NotifyMessage.from_json(webhook.to_json()) == webhook


def test_a_sender_that_died_after_claiming_is_made_up_for_by_the_sweeper_s_claim() -> None:
    world = World()
    job = world.running_job()
    cancel_job(world.videos, world.jobs, world.objects, job.id)
    down = FakeMessageQueue()
    down.down = True
    with pytest.raises(Exception, match="does not answer"):
        send_announcements(world.jobs, FakeVersions(), down)  # type: ignore[arg-type]
    queue = FakeMessageQueue()
    assert send_announcements(world.jobs, FakeVersions(), queue) == 0  # type: ignore[arg-type]  # claimed
    world.clock.advance(120_000)
    later = world.clock.now - 60_000
    assert send_announcements(world.jobs, FakeVersions(), queue, claimed_before_ms=later) == 1  # type: ignore[arg-type]


def test_a_webhook_delivery_is_signed_with_the_owner_s_secret_of_its_version() -> None:
    body = json.dumps({"type": "job.succeeded", "event_id": "evt_1"})
    message = NotifyMessage(WEBHOOK, "evt_1", body, "alice", "SUCCEEDED", None, "https://hooks.example.com/h", 3)
    sender = FakeSender([500, 204])
    with pytest.raises(RuntimeError):
        deliver_notification(message, topic=FakeTopic(), sender=sender, master_secret=lambda: "master")
    deliver_notification(message, topic=FakeTopic(), sender=sender, master_secret=lambda: "master")
    (url, first, headers), (_, second, again) = sender.posts
    assert url == message.webhook_url and first == second == body.encode() and headers == again
    secret = derive_secret("master", "alice", 3)
    assert verify_signature(first, headers[SIGNATURE_HEADER], secret)
    assert not verify_signature(first, headers[SIGNATURE_HEADER], derive_secret("master", "alice", 2))
    assert headers["X-Handpipe-Secret-Version"] == "3"


def test_a_topic_message_carries_the_filter_attributes() -> None:
    topic = FakeTopic()
    message = NotifyMessage(TOPIC, "evt_1", "{}", "alice", "FAILED", "t")
    deliver_notification(message, topic=topic, sender=FakeSender([]), master_secret=lambda: "m")
    assert topic.published == [("{}", {"owner": "alice", "status": "FAILED", "tag": "t"})]


def test_secrets_differ_by_owner_and_version_and_rotate() -> None:
    versions = FakeVersions()
    first = webhook_secret(versions, "master", "alice")
    assert first["version"] == 1 and first["secret"].startswith("whsec_")
    assert webhook_secret(versions, "master", "bob")["secret"] != first["secret"]
    rotated = rotate_webhook_secret(versions, "master", "alice")
    assert rotated["version"] == 2 and rotated["secret"] != first["secret"]
    assert derive_secret("other-master", "alice", 1) != first["secret"]


def test_retries_wait_twice_as_long_each_time_up_to_15_minutes() -> None:
    assert [retry_delay_s(n, 30) for n in (1, 2, 3, 4, 6, 20)] == [30, 60, 120, 240, 900, 900]


# ------------------------------------------------------------------------------------ the URL policy


@pytest.mark.parametrize(
    "url, answers, why",
    [
        ("https://169.254.169.254/latest/meta-data/", None, "not a public address"),
        ("https://10.0.0.1/hook", None, "not a public address"),
        ("https://[::1]/hook", None, "not a public address"),
        ("https://[::ffff:10.0.0.1]/hook", None, "not a public address"),
        ("https://metadata.internal/", ["169.254.169.254"], "not a public address"),
        ("https://split.example.com/", [PUBLIC, "192.168.1.4"], "192.168.1.4"),
        ("https://nowhere.example.com/", [], "does not resolve"),
        ("http://hooks.example.com/h", [PUBLIC], "must be https"),
        ("ftp://hooks.example.com/h", [PUBLIC], "must be https"),
        ("https://user:pw@hooks.example.com/h", [PUBLIC], "user name"),
        ("https://hooks.example.com:99999/", [PUBLIC], "not valid"),
    ],
)
def test_webhook_urls_into_private_networks_are_refused(url: str, answers: list[str] | None, why: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    table = {host: answers if answers is not None else [host]}
    with pytest.raises(UnsafeWebhook, match=why):
        WebhookPolicy(resolver=resolver(table)).check(url)


def test_loopback_is_allowed_only_where_the_stage_says_so_and_private_addresses_never() -> None:
    local = WebhookPolicy(
        resolver=resolver({"127.0.0.1": ["127.0.0.1"], "10.0.0.1": ["10.0.0.1"]}), allow_loopback=True
    )
    assert local.check("http://127.0.0.1:8123/hook?x=1").path == "/hook?x=1"
    with pytest.raises(UnsafeWebhook):
        local.check("https://10.0.0.1/hook")
    with pytest.raises(UnsafeWebhook):
        WebhookPolicy(resolver=resolver({"127.0.0.1": ["127.0.0.1"]})).check("http://127.0.0.1:8123/hook")


def test_job_creation_refuses_a_bad_webhook_with_a_400() -> None:
    world = World()
    video = world.uploaded()
    with pytest.raises(InvalidInput, match="not a public address"):
        notify_trigger(world, video["id"], url="https://10.0.0.1/")
    for bad in ({"webhook_url": 5}, "https://x", {"webhook_url": "https://hooks.example.com", "secret": "s"}):
        with pytest.raises(InvalidInput, match="notify"):
            create_job(
                world.videos,
                world.jobs,
                world.objects,
                world.jobs_q,
                world.settings,
                video["id"],
                {"notify": bad},
                webhooks=HOOKS,
            )
    assert world.tables.jobs == {}


def test_a_webhook_whose_dns_changed_to_a_private_address_is_refused_at_delivery() -> None:
    answers = {"hooks.example.com": [PUBLIC]}
    policy = WebhookPolicy(resolver=resolver(answers))
    policy.check("https://hooks.example.com/h")  # accepted when the job was made
    answers["hooks.example.com"] = ["10.0.0.1"]  # rebinding
    with pytest.raises(UnsafeWebhook, match="10.0.0.1"):
        WebhookSender(policy).post("https://hooks.example.com/h", b"{}", {})
