"""The worker Lambda: takes messages from the "work" queue (work items, probes, render requests) through
one dispatcher with one retry policy, runs the engine on each item's time range, writes the result
part to S3 and reports on the "events" queue. It never touches the DB."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.shared import telemetry as shared_telemetry
from chalicelib.shared.cancellation import CancelCheck
from chalicelib.shared.contracts import (
    ARTIFACTS_WRITTEN,
    PROBE_REQUEST,
    RENDER_REQUEST,
    SEGMENT_FAILED,
    SEGMENT_PROGRESS,
    SEGMENT_SUCCEEDED,
    VIDEO_PROBED,
    WORK_ITEM,
    ContractError,
    ProbeRequest,
    RenderRequest,
    SegmentEvent,
    WorkItem,
    decode_body,
    frame_index_key,
    part_head_key,
    part_key,
    picture_key,
    video_filename,
    work_message_type,
)
from chalicelib.shared.queues import MessageQueue
from chalicelib.shared.results import MergeError, merge_parts, part_head
from chalicelib.shared.storage import ObjectMissing, ObjectStore, RangedReader, StorageUnavailable

from .engine import StoppedEarly, VideoDecodeError, process_video
from .heartbeat import Heartbeat
from .models import ModelCache, ModelError
from .video import FrameIndex, VideoFile, VideoInfo

logger = logging.getLogger("handpipe.worker")


def _local_name(key: str) -> str:
    return video_filename(key)


@dataclass(frozen=True)
class WorkerSettings:
    events_queue_url: str
    max_receives: int = 3  # must match the work queue's redrive policy
    deadline_margin_s: float = 20.0  # stop this long before Lambda would kill us
    progress_interval_s: float = 5.0
    visibility_s: int = 120  # a running item's visibility, extended by the heartbeat (0: no heartbeat)
    cancel_check_interval_s: float = 2.0  # how often a running segment looks for its job's cancel marker

    @classmethod
    def from_env(cls) -> WorkerSettings:
        url = os.environ.get("HANDPIPE_EVENTS_QUEUE_URL")
        if not url:
            raise RuntimeError("HANDPIPE_EVENTS_QUEUE_URL is not set: the worker cannot report results")
        return cls(
            events_queue_url=url,
            max_receives=int(os.environ.get("HANDPIPE_WORK_MAX_RECEIVES", "3")),
            deadline_margin_s=float(os.environ.get("HANDPIPE_DEADLINE_MARGIN_S", "20")),
            progress_interval_s=float(os.environ.get("HANDPIPE_PROGRESS_INTERVAL_S", "5")),
            visibility_s=int(os.environ.get("HANDPIPE_WORK_VISIBILITY_S", "120")),
            cancel_check_interval_s=float(os.environ.get("HANDPIPE_CANCEL_CHECK_INTERVAL_S", "2")),
        )


@dataclass(frozen=True)
class _Kind:
    """One kind of work message: how to read it, run it (raising only on a transient fault), and give
    up on it once its receives are spent."""

    parse: Callable[[str], Any]
    run: Callable[[Any, Any, int], None]  # (message, Lambda context, attempt)
    give_up: Callable[[Any, Exception, int], None]  # (message, the last error, attempt)
    name: Callable[[Any], str]  # for the log


def _item_name(item: WorkItem) -> str:
    return f"work item {item.job_id}/{item.segment}"


def _probe_name(request: ProbeRequest) -> str:
    return f"probe of {request.video_key}"


def _render_name(request: RenderRequest) -> str:
    return f"writing the artifacts of job {request.job_id}"


def _give_up_render(request: RenderRequest, error: Exception, attempt: int) -> None:
    """The job has SUCCEEDED already (its summary is known, its frames are served from the parts): giving
    up is logged, never turned into a failed job, and the sweeper asks for the artifacts again later."""
    logger.error("gave up on the artifacts of job %s after %d attempts: %s", request.job_id, attempt, error)


class Worker:
    """Processes SQS batches; one per container, holding its clients and model cache."""

    def __init__(
        self,
        s3_client: Any,
        sqs_client: Any,
        settings: WorkerSettings,
        models: ModelCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s3 = s3_client
        self.events = MessageQueue(sqs_client, settings.events_queue_url)
        self.settings = settings
        self.models = models or ModelCache(fetch_s3=self._fetch_s3_uri)
        self.clock = clock
        self.heartbeat = Heartbeat(sqs_client, visibility_s=settings.visibility_s)
        self._kinds = {
            WORK_ITEM: _Kind(WorkItem.from_json, self.process, self._give_up_item, _item_name),
            PROBE_REQUEST: _Kind(ProbeRequest.from_json, self._probe_and_report, self._give_up_probe, _probe_name),
            RENDER_REQUEST: _Kind(RenderRequest.from_json, self._render, _give_up_render, _render_name),
        }

    def _fetch_s3_uri(self, uri: str) -> bytes:
        """A user's model from S3; a missing or forbidden object fails the job (ModelError), not retried."""
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            return ObjectStore(self.s3, bucket).get_bytes(key)
        except ObjectMissing:
            raise ModelError(f"model {uri} does not exist: upload the .task file there first") from None
        except StorageUnavailable as error:
            if "AccessDenied" not in str(error):
                raise
            raise ModelError(
                f"the worker may not read {uri}: put the model under models/ in handpipe's bucket "
                "(s3://BUCKET/models/NAME.task)"
            ) from None

    def handle_batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Returns the partial-batch response: only records that should be retried are listed."""
        failures = []
        for record in event.get("Records", []):
            if not self.handle_record(record, context):
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def handle_record(self, record: dict[str, Any], context: Any) -> bool:
        """True when the record is finished with (done, or failed for good and reported)."""
        body = record.get("body")
        keys = shared_telemetry.message_keys(body) if isinstance(body, str) else {}
        with shared_telemetry.record_keys(**keys, message_id=record.get("messageId")):
            shared_telemetry.queue_age_metrics(record, "work")
            with self.heartbeat.beating(record):  # the item stays ours while we run it, and only then
                return self._handle_record(record, context)

    def _handle_record(self, record: dict[str, Any], context: Any) -> bool:
        attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            kind = self._kinds[work_message_type(record["body"])]
            message = kind.parse(record["body"])
        except ContractError as error:
            return self._reject_malformed(record["body"], str(error), attempt)
        return self._with_retries(kind, message, context, attempt)

    def _with_retries(self, kind: _Kind, message: Any, context: Any, attempt: int) -> bool:
        """The one retry policy of every work message. Failures every retry would repeat (a video that
        cannot be decoded, a missing object or model) are reported by `run` at once, which is then done.
        Anything it raises is taken to be transient (S3, SQS): the record goes back to the queue (False)
        until its last receive, then the kind gives up with the reason (True). Should that report fail
        too, the record goes back once more, and to the dead-letter queue after its last receive."""
        try:
            kind.run(message, context, attempt)
            return True
        except Exception as error:
            logger.exception("%s failed on attempt %d", kind.name(message), attempt)
            if attempt < self.settings.max_receives:
                return False
            try:
                kind.give_up(message, error, attempt)
            except Exception:
                logger.exception("could not report giving up on %s", kind.name(message))
                return False
            return True

    def _give_up_item(self, item: WorkItem, error: Exception, attempt: int) -> None:
        self._report_failure(item, "worker_error", f"gave up after {attempt} attempts: {error}", attempt)

    def _probe_and_report(self, request: ProbeRequest, context: Any, attempt: int) -> None:
        try:
            info = self.probe(request)
        except (VideoDecodeError, ObjectMissing) as error:
            code = error.code if isinstance(error, VideoDecodeError) else "video_missing"
            reason = error.reason if isinstance(error, VideoDecodeError) else f"{error}: upload it first"
            self._send_failure(request.job_id, request.video_id, 0, code, reason, attempt)
            return
        self.events.send(
            SegmentEvent(
                type=VIDEO_PROBED,
                job_id=request.job_id,
                video_id=request.video_id,
                segment=0,
                video=info,
                attempt=attempt,
            )
        )

    def _give_up_probe(self, request: ProbeRequest, error: Exception, attempt: int) -> None:
        self._send_failure(request.job_id, request.video_id, 0, "worker_error", f"probe failed: {error}", attempt)

    def _render(self, request: RenderRequest, context: Any, attempt: int) -> None:
        try:
            written = self.render(request)
        except MergeError as error:
            # The parts' heads formed one video when the job SUCCEEDED; their frames do not. Every retry
            # would fail the same way, so it is logged with the reason (for an operator), not retried.
            logger.error("the parts of job %s do not merge: %s", request.job_id, error)
            return
        self.events.send(
            SegmentEvent(
                type=ARTIFACTS_WRITTEN,
                job_id=request.job_id,
                video_id=request.video_id,
                segment=0,
                attempt=attempt,
                extra={"written": len(written)},
            )
        )

    def _merged_result(self, store: ObjectStore, request: RenderRequest) -> dict[str, Any]:
        """The job's full result: stored already, or merged here from its parts and stored. The job
        SUCCEEDED before this (off its critical path); every step here is idempotent, so a redelivery
        after a crash writes the same bytes again."""
        if request.segments and store.head(request.result_key) is None:
            parts = (store.get_result(part_key(request.video_id, request.job_id, i)) for i in range(request.segments))
            result = merge_parts(parts)
            store.put_result(request.result_key, result)
            return result
        return store.get_result(request.result_key)

    def render(self, request: RenderRequest) -> list[str]:
        """Store the job's merged result, its insights and exports, and draw its pictures next to it;
        returns the keys, the contact sheet last. The API writes a small job's export itself when asked,
        but a large one takes longer than an API request may, so every export is written here."""
        from chalicelib.shared.artifacts import write_artifacts
        from chalicelib.shared.insights import analyze

        from .pictures import annotated_video, contact_sheet, timeline_png

        store = ObjectStore(self.s3, request.bucket)
        result = self._merged_result(store, request)
        insights = analyze(result)
        artifacts = write_artifacts(
            store, video_id=request.video_id, job_id=request.job_id, result=result, insights=insights
        )
        written = artifacts.keys()
        timeline = picture_key(request.video_id, request.job_id, "timeline")
        store.put_bytes(timeline, timeline_png(result, insights), "image/png")
        written.append(timeline)
        reader = store.open_ranged(request.video_key)
        index, _ = self._frame_index(store, request.video_id, reader, request.video_key)
        if request.annotated_video:
            with tempfile.TemporaryDirectory(prefix="handpipe-render-") as workdir:
                out = annotated_video(
                    reader, result, os.path.join(workdir, "annotated.mp4"), insights, frame_index=index
                )
                key = picture_key(request.video_id, request.job_id, "annotated_video")
                self.s3.upload_file(str(out), request.bucket, key, ExtraArgs={"ContentType": "video/mp4"})
                written.append(key)
        # Written last: its presence tells clients that all the pictures are there.
        sheet = picture_key(request.video_id, request.job_id, "contact_sheet")
        store.put_bytes(sheet, contact_sheet(reader, result, insights=insights, frame_index=index), "image/png")
        written.append(sheet)
        return written

    def probe(self, request: ProbeRequest) -> dict[str, Any]:
        """The video's container facts, exact: the probe demuxes every packet (no decoding) through
        ranged reads and stores the frame index that the job's segments then address frames by."""
        store = ObjectStore(self.s3, request.bucket)
        reader = store.open_ranged(request.video_key)
        _, info = self._frame_index(store, request.video_id, reader, request.video_key)
        return info.to_dict()

    def _frame_index(
        self, store: ObjectStore, video_id: str, reader: RangedReader, video_key: str
    ) -> tuple[FrameIndex, VideoInfo]:
        """The object's frame index from S3, or built (and stored) when this version has none yet."""
        key = frame_index_key(video_id, reader.etag)
        name = _local_name(video_key)
        with VideoFile(reader, name) as video:
            index: FrameIndex | None = None
            if store.head(key) is not None:
                try:
                    index = FrameIndex.from_bytes(store.get_bytes(key))
                except (ValueError, KeyError, OSError):
                    logger.warning("frame index %s is unreadable; building it again", key)
            if index is None:
                index = video.build_index()
                store.put_bytes(key, index.to_bytes(), "application/gzip")
            return index, video.describe(index)

    def _send_failure(self, job_id: str, video_id: str, segment: int, code: str, reason: str, attempt: int) -> None:
        logger.warning("job %s segment %s failed: %s", job_id, segment, reason)
        self.events.send(
            SegmentEvent(
                type=SEGMENT_FAILED,
                job_id=job_id,
                video_id=video_id,
                segment=segment,
                error=reason,
                error_code=code,
                attempt=attempt,
            )
        )

    def _reject_malformed(self, body: str, reason: str, attempt: int) -> bool:
        """A malformed item cannot succeed on retry. If it names its job, fail the job; otherwise leave
        it to SQS, which moves it to the dead-letter queue after the configured receives."""
        logger.error("malformed work item (%s): %.200s", reason, body)
        try:
            raw = decode_body(body)
            event = SegmentEvent(
                type=SEGMENT_FAILED,
                job_id=str(raw["job_id"]),
                video_id=str(raw["video_id"]),
                segment=int(raw["segment"]),
                error=f"malformed work item: {reason}",
                error_code="bad_message",
                attempt=attempt,
            )
        except (ContractError, KeyError, TypeError, ValueError):
            return False
        self.events.send(event)
        return True

    def process(self, item: WorkItem, context: Any, attempt: int = 1) -> None:
        store = ObjectStore(self.s3, item.bucket)
        cancelled = CancelCheck(
            store, item.video_id, item.job_id, interval_s=self.settings.cancel_check_interval_s, clock=self.clock
        )
        if cancelled():
            # Sent before its job was cancelled: it never starts. Nothing to report (the job has ended).
            logger.info("%s: its job was cancelled; not started", _item_name(item))
            return
        if store.head(item.part_key) is not None:
            # Done by an earlier delivery: report again (the recorder ignores repeats), redo nothing.
            part = store.get_result(item.part_key)
            self._report_success(item, part, attempt)
            return
        deadline = self._deadline(context)
        began = self.clock()
        last_progress = [began]

        def progress(done: int, expected: int | None) -> None:
            if self.clock() - last_progress[0] >= self.settings.progress_interval_s:
                last_progress[0] = self.clock()
                self.events.send(
                    SegmentEvent(
                        type=SEGMENT_PROGRESS,
                        job_id=item.job_id,
                        video_id=item.video_id,
                        segment=item.segment,
                        frames_processed=done,
                        attempt=attempt,
                        extra={"frames_expected": expected},
                    )
                )

        should_stop = self._stop_check(deadline, cancelled)
        try:
            reader = store.open_ranged(item.video_key)
        except ObjectMissing:
            self._report_failure(
                item, "video_missing", f"the video object {item.video_key} does not exist: upload it first", attempt
            )
            return
        try:
            # A range addresses frames through the video's frame index; a whole-video item counts them.
            ranged = item.options.start_ms is not None or item.options.end_ms is not None
            index = self._frame_index(store, item.video_id, reader, item.video_key)[0] if ranged else None
            result = process_video(
                reader,
                item.options,
                models=self.models,
                warmup_ms=item.warmup_ms,
                progress=progress,
                should_stop=should_stop,
                frame_index=index,
                name=_local_name(item.video_key),
                bytes_read=lambda: reader.bytes_fetched,
            )
        except VideoDecodeError as error:
            self._report_failure(item, error.code, error.reason, attempt)
            return
        except ModelError as error:
            self._report_failure(item, "model_error", str(error), attempt)
            return
        except StoppedEarly as error:
            self._report_stopped(item, error, attempt, cancelled=cancelled.cancelled)
            return
        # The head first: a part that exists always has one, for the job's summary (orchestration).
        head = part_head_key(item.video_id, item.job_id, item.segment)
        store.put_bytes(head, _head_bytes(result), "application/json")
        store.put_result(item.part_key, result)
        shared_telemetry.metric(shared_telemetry.FRAMES_PROCESSED, result["stats"]["frames_processed"])
        shared_telemetry.metric(shared_telemetry.SEGMENT_SECONDS, self.clock() - began, shared_telemetry.SECONDS)
        logger.info("segment %s of job %s processed", item.segment, item.job_id)
        self._report_success(item, result, attempt)

    def _stop_check(self, deadline: float | None, cancelled: CancelCheck) -> Callable[[], str | None]:
        """What the engine asks at every frame: stop when the job was cancelled or Lambda's end nears."""

        def should_stop() -> str | None:
            if cancelled():
                return "its job was cancelled"
            if deadline is not None and self.clock() >= deadline:
                return (
                    "stopped before the Lambda timeout: the segment is too long for this worker; "
                    "use shorter segments or a longer worker timeout"
                )
            return None

        return should_stop

    def _report_stopped(self, item: WorkItem, error: StoppedEarly, attempt: int, *, cancelled: bool) -> None:
        if cancelled:  # nothing to report: the job has ended, and what its segments say is ignored
            logger.info("%s: stopped after %d frames, its job was cancelled", _item_name(item), error.frames_processed)
            return
        reached = "nothing" if error.last_timestamp_ms is None else f"{error.last_timestamp_ms / 1000:.1f} s"
        self._report_failure(
            item,
            "deadline",
            f"{error.reason} (processed {error.frames_processed} frames, up to {reached})",
            attempt,
        )

    def _deadline(self, context: Any) -> float | None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return None
        return self.clock() + remaining() / 1000.0 - self.settings.deadline_margin_s

    def _report_success(self, item: WorkItem, part: dict[str, Any], attempt: int) -> None:
        self.events.send(
            SegmentEvent(
                type=SEGMENT_SUCCEEDED,
                job_id=item.job_id,
                video_id=item.video_id,
                segment=item.segment,
                part_key=item.part_key,
                frames_processed=part["stats"]["frames_processed"],
                frames_with_hands=part["stats"]["frames_with_hands"],
                video=part["video"],
                attempt=attempt,
                extra={"decode": part["decode"]},
            )
        )

    def _report_failure(self, item: WorkItem, code: str, reason: str, attempt: int) -> None:
        self._send_failure(item.job_id, item.video_id, item.segment, code, reason, attempt)


def _head_bytes(part: dict[str, Any]) -> bytes:
    return json.dumps(part_head(part), separators=(",", ":")).encode()


_WORKER: Worker | None = None


def _default_worker() -> Worker:
    """Created on the first invocation, then reused for the container's life."""
    global _WORKER
    if _WORKER is None:
        import boto3

        _WORKER = Worker(boto3.client("s3"), boto3.client("sqs"), WorkerSettings.from_env())
    return _WORKER


def worker_telemetry() -> shared_telemetry.Telemetry:
    """Powertools (JSON log lines, EMF metrics with the stage as their dimension) and MediaPipe's native
    log lines filtered, set up on the container's first invocation, unless the local stack installed its own."""
    current = shared_telemetry.telemetry()
    if not isinstance(current, shared_telemetry.NoTelemetry):
        return current
    import aws_lambda_powertools

    from .native_logs import filter_native_stderr

    if os.environ.get("AWS_LAMBDA_RUNTIME_API"):  # in Lambda only: a test process keeps its stderr as it is
        filter_native_stderr()
    return shared_telemetry.install_powertools(aws_lambda_powertools, stage=os.environ.get("HANDPIPE_STAGE", "local"))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point (the image's CMD) for SQS batches from the "work" queue; the invocation's metrics
    are sent at its end."""
    telemetry = worker_telemetry()
    try:
        return _default_worker().handle_batch(event, context)
    finally:
        telemetry.flush()
