"""handpipe's API and queue consumers. Routes only parse the request, call a service function from
chalicelib.service with the container's dependencies, and map errors to JSON responses."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Rate, Response
from chalice.app import Request, SQSEvent

from chalicelib.adapters.migrations import LATEST_VERSION, upgrade
from chalicelib.adapters.notify import Redelivery
from chalicelib.config import NotConfigured, auth_mode, sqs_queue_names
from chalicelib.runtime import app_telemetry, runtime
from chalicelib.service import cancel as cancel_service
from chalicelib.service import health as health_service
from chalicelib.service import intake as intake_service
from chalicelib.service import job_search, notifications
from chalicelib.service import jobs as job_service
from chalicelib.service import notifications_secrets as secret_service
from chalicelib.service import uploads as upload_service
from chalicelib.service import videos as video_service
from chalicelib.service.common import now_ms
from chalicelib.service.errors import InvalidInput, ServiceError
from chalicelib.service.jobs import PartCache, job_frames, job_result
from chalicelib.service.orchestration import plan_job, record_event, sweep
from chalicelib.service.views import job_view, video_view
from chalicelib.shared.contracts import JobRequested, SegmentEvent
from chalicelib.shared.queues import BatchAcknowledger
from chalicelib.shared.telemetry import message_keys, queue_age_metrics, queue_name, record_keys
from chalicelib.web.auth import NO_BODY, PUBLIC_PATHS, Caller, request_caller, route_protection
from chalicelib.web.errors import error_response, map_errors, not_configured
from chalicelib.web.insight_routes import insight_routes
from chalicelib.web.openapi import load_openapi
from chalicelib.web.parsing import MAX_FRAMES_PAGE, MAX_PAGE, parse_limit, parse_ms, single_query_value

app = Chalice(app_name="handpipe")
app.log.setLevel(logging.INFO)

QUEUES = sqs_queue_names()
PROTECTED = route_protection(auth_mode())
MAX_BODY_BYTES = 64 * 1024
_PARTS = PartCache()


def current_request() -> Request:
    """The request being handled; Chalice sets it before it calls a route or middleware."""
    request = app.current_request
    if request is None:
        raise RuntimeError("no request is being handled")
    return request


api = map_errors  # service errors to JSON responses (chalicelib.web.errors)


def json_body() -> dict[str, Any]:
    request = current_request()
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    content_type = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    if raw and content_type != "application/json":
        raise InvalidInput("send the body as JSON with Content-Type: application/json")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInput("the body's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def caller() -> Caller:
    """Who sent the current request; raises Unauthorized or Forbidden (mapped to 401/403)."""
    who = request_caller(current_request(), runtime().settings)
    if who.owner is not None:
        app_telemetry().append_keys(owner=who.owner)
    return who


@app.middleware("all")
def observe(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Every invocation, of every kind: JSON log lines carrying what is known of the request (a route's
    video_id and job_id; its caller's owner once checked), and the metrics sent at its end."""
    telemetry = app_telemetry()
    telemetry.clear_keys()
    params = getattr(event, "uri_params", None) or {}
    telemetry.append_keys(**{name: params[name] for name in ("video_id", "job_id") if name in params})
    try:
        return get_response(event)
    finally:
        telemetry.flush()
        telemetry.clear_keys()


@app.middleware("http")
def require_credentials(event: Any, get_response: Callable[[Any], Response]) -> Response:
    """Credentials are checked first, before Chalice checks content types: a caller without a key
    learns that before anything else about its request."""
    if (event.context or {}).get("resourcePath") not in PUBLIC_PATHS:
        try:
            caller()
        except ServiceError as error:
            return error_response(error.status, error.code, error.message)
        except NotConfigured as error:
            return not_configured(error)
    response: Response = get_response(event)
    return response


def owner() -> str | None:
    return caller().owner


def query(name: str) -> str | None:
    return single_query_value(current_request().query_params, name)


JSON_ONLY = ["application/json"]


# --------------------------------------------------------------------------------------------- videos


@app.route("/videos", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def list_videos() -> dict[str, Any]:
    who, rt = owner(), runtime()
    return video_service.list_videos(
        rt.videos,
        status=query("status"),
        limit=parse_limit(query("limit"), 20, MAX_PAGE),
        next_token=query("next_token"),
        owner=who,
    )


@app.route("/videos", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def register_video() -> Response:
    who, rt = owner(), runtime()
    view = video_service.register_video(
        rt.videos, rt.store, rt.settings, json_body(), owner=who, multipart=rt.multipart
    )
    return Response(body=view, status_code=201)


@app.route("/videos/{video_id}", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_video(video_id: str) -> dict[str, Any]:
    who = owner()
    return video_view(video_service.get_video(runtime().videos, video_id, owner=who))


@app.route("/videos/{video_id}/upload-url", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def new_upload_url(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return video_service.new_upload_url(
        rt.videos, rt.store, rt.settings, video_id, json_body(), owner=who, multipart=rt.multipart
    )


@app.route("/videos/{video_id}", methods=["DELETE"], content_types=NO_BODY, **PROTECTED)
@api
def delete_video(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return video_service.delete_video(rt.videos, rt.jobs, rt.store, video_id, owner=who, multipart=rt.multipart)


# --------------------------------------------------------------------------------------------- multipart uploads


@app.route("/videos/{video_id}/upload/parts", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def upload_part_urls(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    video = video_service.get_video(rt.videos, video_id, owner=who)
    return upload_service.part_urls(rt.multipart, rt.settings, video, json_body())


@app.route("/videos/{video_id}/upload", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_upload(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return upload_service.upload_state(rt.multipart, video_service.get_video(rt.videos, video_id, owner=who))


@app.route("/videos/{video_id}/upload/complete", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def complete_upload(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    video = video_service.get_video(rt.videos, video_id, owner=who)
    return upload_service.complete(rt.multipart, rt.videos, rt.store, video, json_body())


@app.route("/videos/{video_id}/upload", methods=["DELETE"], content_types=NO_BODY, **PROTECTED)
@api
def abort_upload(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return video_service.abort_upload(rt.videos, rt.jobs, rt.store, rt.multipart, video_id, owner=who)


# --------------------------------------------------------------------------------------------- jobs


@app.route("/jobs", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def find_jobs() -> dict[str, Any]:
    who, rt = owner(), runtime()
    where = job_search.build_filter(
        owner=who,
        status=query("status"),
        tag=query("tag"),
        video_id=query("video_id"),
        created_after=query("created_after"),
    )
    limit = parse_limit(query("limit"), job_search.DEFAULT_LIMIT, job_search.MAX_LIMIT)
    return job_search.find_jobs(rt.job_search, where, limit=limit, next_token=query("next_token"))


@app.route("/videos/{video_id}/jobs", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def create_job(video_id: str) -> Response:
    who, rt = owner(), runtime()
    view, created = job_service.create_job(
        rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.settings, video_id, json_body(), owner=who
    )
    _send_announcements()  # a job made FAILED at once (an empty range) has ended already
    return Response(body=view, status_code=202 if created else 200)


@app.route("/videos/{video_id}/jobs", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def list_jobs(video_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return job_service.list_jobs(
        rt.videos,
        rt.jobs,
        video_id,
        limit=parse_limit(query("limit"), 20, MAX_PAGE),
        next_token=query("next_token"),
        owner=who,
    )


@app.route("/jobs/{job_id}", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_job(job_id: str) -> dict[str, Any]:
    who = owner()
    return job_view(job_service.get_job(runtime().jobs, job_id, owner=who))


@app.route("/jobs/{job_id}/result", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_result(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return job_result(rt.jobs, rt.store, rt.settings, job_id, owner=who)


@app.route("/jobs/{job_id}/frames", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_frames(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return job_frames(
        rt.jobs,
        rt.store,
        _PARTS,
        job_id,
        owner=who,
        start_ms=parse_ms(query("start_ms"), "start_ms"),
        end_ms=parse_ms(query("end_ms"), "end_ms"),
        max_results=parse_limit(query("max_results"), 100, MAX_FRAMES_PAGE, "max_results"),
        next_token=query("next_token"),
    )


def no_body() -> None:
    """For POSTs that take nothing: an empty body or {} (clients that always send JSON send that)."""
    if json_body():
        raise InvalidInput("this request takes no body (send nothing, or {})")


@app.route("/jobs/{job_id}/cancel", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def cancel_job(job_id: str) -> dict[str, Any]:
    no_body()
    who, rt = owner(), runtime()
    view = job_view(cancel_service.cancel_job(rt.videos, rt.jobs, rt.store, job_id, owner=who))
    _send_announcements()
    return view


app.register_blueprint(insight_routes)  # /jobs/{job_id}/export, /insights, /viewer


# --------------------------------------------------------------------------------------------- webhooks


@app.route("/webhook-secret", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_webhook_secret() -> dict[str, Any]:
    who, rt = owner(), runtime()
    return secret_service.webhook_secret(rt.webhook_secrets, rt.webhook_master_secret, who)


@app.route("/webhook-secret/rotate", methods=["POST"], content_types=JSON_ONLY, **PROTECTED)
@api
def rotate_webhook_secret() -> dict[str, Any]:
    no_body()
    who, rt = owner(), runtime()
    return secret_service.rotate_webhook_secret(rt.webhook_secrets, rt.webhook_master_secret, who)


# --------------------------------------------------------------------------------------------- health


@app.route("/health", methods=["GET"], content_types=NO_BODY)
def health() -> Response:
    try:
        rt = runtime()
    except NotConfigured as error:
        return not_configured(error)
    healthy, checks = health_service.health(
        {
            "database": lambda: rt.db.ping(),
            "bucket": rt.store.check,
            "jobs_queue": rt.jobs_queue.check,
            "work_queue": rt.work_queue.check,
        }
    )
    return Response(
        body={"status": "ok" if healthy else "degraded", "checks": checks}, status_code=200 if healthy else 503
    )


@app.route("/openapi.json", methods=["GET"], content_types=NO_BODY)
def openapi() -> dict[str, Any]:
    return load_openapi()


# --------------------------------------------------------------------------------------------- operations


@app.lambda_function(name="migrate")
def migrate(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Applies the database migrations from inside the VPC, where the database is reachable;
    `handpipe deploy` invokes it after `chalice deploy`."""
    applied = upgrade(runtime().database)
    return {"applied": applied, "version": LATEST_VERSION}


@app.schedule(Rate(5, unit=Rate.MINUTES))
def sweep_stuck_jobs(event: Any) -> None:
    """Every five minutes: resend lost work, merge, dispatch waiting jobs, fail what cannot recover."""
    rt = runtime()
    try:
        report = sweep(rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.work_queue, rt.settings)
    finally:
        # Also what a sender that died after claiming left: claimed over a minute ago and not sent.
        _send_announcements(claimed_before_ms=now_ms() - 60_000)
    if report.failed or report.resent or report.requested or report.finished:
        app.log.warning("sweep: %s", report)


# --------------------------------------------------------------------------------------------- queues


def _consume(event: SQSEvent, kind: str, handle: Callable[[str], str]) -> None:
    """Handle every record on its own. If any failed, delete the ones handled and raise, so SQS
    redelivers only the failed ones and, after the queue's max receives, moves them to the
    dead-letter queue; their batch-mates are neither replayed nor dead-lettered with them."""
    handled, failed = [], 0
    for record in event:
        raw = record.to_dict()
        with record_keys(**message_keys(record.body), message_id=raw.get("messageId")):
            queue_age_metrics(raw, queue_name(raw))
            try:
                app.log.info("%s %s: %s", kind, raw.get("messageId"), handle(record.body))
                handled.append(raw)
            except Exception:
                failed += 1
                app.log.exception("%s failed: %.300s", kind, record.body)
    if failed:
        if handled:
            BatchAcknowledger(runtime().sqs).delete(handled)
        raise RuntimeError(f"{failed} {kind} message(s) failed; SQS will redeliver them")


@app.on_sqs_message(queue=QUEUES["jobs"], batch_size=1)
def plan_jobs(event: SQSEvent) -> None:
    """Plans each requested job into work items."""
    rt = runtime()

    def handle(body: str) -> str:
        return plan_job(rt.videos, rt.jobs, rt.work_queue, rt.settings, JobRequested.from_json(body), store=rt.store)

    try:
        _consume(event, "job request", handle)
    finally:
        _send_announcements()


@app.on_sqs_message(queue=QUEUES["uploads"], batch_size=10, maximum_concurrency=2)
def intake_uploads(event: SQSEvent) -> None:
    """Registers and processes each object S3 reports under the upload-trigger prefix (the bucket's
    notifications go to the "uploads" queue: S3 -> SQS -> this Lambda, with its dead-letter queue). At
    most 2 at once, within its reserved concurrency, so a burst waits in the queue instead of being
    throttled into the dead-letter queue."""
    rt = runtime()

    def handle(body: str) -> str:
        return intake_service.handle_notification(
            rt.videos, rt.jobs, rt.intake, rt.store, rt.jobs_queue, rt.settings, body
        )

    _consume(event, "upload notification", handle)


@app.on_sqs_message(queue=QUEUES["events"], batch_size=10)
def record_events(event: SQSEvent) -> None:
    """Records worker events: progress, and segments that succeeded or failed."""
    rt = runtime()

    def handle(body: str) -> str:
        return record_event(rt.videos, rt.jobs, rt.store, rt.work_queue, rt.settings, SegmentEvent.from_json(body))

    try:
        _consume(event, "worker event", handle)
    finally:
        _send_announcements()


# --------------------------------------------------------------------------------------------- notifications


def _send_announcements(claimed_before_ms: int = 0) -> None:
    """Hand the job ends just recorded to the notify queue. Never fails its caller: what is not sent
    now stays recorded, and the sweeper sends it."""
    try:
        rt = runtime()
        queue = rt.notify_queue
        notifications.send_announcements(rt.jobs, rt.webhook_secrets, queue, claimed_before_ms=claimed_before_ms)
    except NotConfigured as error:
        app.log.warning("job-end announcements wait: %s", error)
    except Exception:
        app.log.exception("could not send job-end announcements; the sweeper tries again")


@app.on_sqs_message(queue=QUEUES["notify"], batch_size=10)
def deliver_notifications(event: SQSEvent) -> None:
    """Publishes job ends on the SNS topic and POSTs them to webhooks. A delivery that fails comes
    back later, each time after twice the delay (Redelivery), until the queue's max receives send it
    to the dead-letter queue; the others of its batch are deleted, as in _consume."""
    rt = runtime()
    handled, failed = [], 0
    for record in event:
        raw = record.to_dict()
        try:
            message = notifications.NotifyMessage.from_json(record.body)
            outcome = notifications.deliver_notification(
                message,
                topic=rt.job_end_topic,
                sender=rt.webhook_sender,
                master_secret=lambda: rt.webhook_master_secret,
            )
            app.log.info("notification %s: %s", raw.get("messageId"), outcome)
            handled.append(raw)
        except Exception as error:
            failed += 1
            receives = int(raw.get("attributes", {}).get("ApproximateReceiveCount", "1"))
            delay = notifications.retry_delay_s(receives, rt.settings.notify_retry_base_s)
            app.log.warning("notification failed (attempt %d, next in %d s): %s", receives, delay, error)
            Redelivery(rt.sqs).postpone(raw, delay)
    if failed:
        if handled:
            BatchAcknowledger(runtime().sqs).delete(handled)
        raise RuntimeError(f"{failed} notification(s) failed; SQS will redeliver them")
