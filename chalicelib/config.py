"""Settings for the app, read from the environment that `.chalice/config.json` sets per stage (or
that the local stack sets). Read when first needed, never at import."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from chalicelib.adapters.database import TLS_MODES
from chalicelib.shared.contracts import queue_names
from chalicelib.web.auth import AUTH_MODES, parse_api_keys

QUEUE_PREFIX_VARIABLE = "HANDPIPE_QUEUE_PREFIX"


def queue_prefix() -> str:
    # Read at import by the @app.on_sqs_message decorators, so only with a default (chalice package
    # sees the variable only when the deploy command sets it).
    return os.environ.get(QUEUE_PREFIX_VARIABLE, "handpipe")


def sqs_queue_names() -> dict[str, str]:
    return queue_names(queue_prefix())


def auth_mode(env: Mapping[str, str] | None = None) -> str:
    """Read at import too, by the route decorators (API Gateway enforces keys or IAM in AWS)."""
    mode = (os.environ if env is None else env).get("HANDPIPE_AUTH", "api_key")
    if mode not in AUTH_MODES:
        raise NotConfigured(f"HANDPIPE_AUTH must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def _local_key(key: str | None) -> str | None:
    return f"{key}=local" if key else None


# The integer settings and the variables that set them; 0 means "the default" except for these.
_NUMBER_VARIABLES = {
    "upload_url_expires_s": "HANDPIPE_UPLOAD_URL_EXPIRES_S",
    "download_url_expires_s": "HANDPIPE_DOWNLOAD_URL_EXPIRES_S",
    "max_upload_bytes": "HANDPIPE_MAX_UPLOAD_BYTES",
    "warmup_ms": "HANDPIPE_WARMUP_MS",
    "max_active_jobs_per_video": "HANDPIPE_MAX_ACTIVE_JOBS_PER_VIDEO",
    "max_in_flight_per_job": "HANDPIPE_MAX_IN_FLIGHT_PER_JOB",
    "max_in_flight": "HANDPIPE_MAX_IN_FLIGHT",
    "max_duration_ms": "HANDPIPE_MAX_DURATION_MS",
    "max_pixels": "HANDPIPE_MAX_PIXELS",
    "max_segments_per_job": "HANDPIPE_MAX_SEGMENTS_PER_JOB",
    "max_frames_per_job": "HANDPIPE_MAX_FRAMES_PER_JOB",
    "stuck_after_s": "HANDPIPE_STUCK_AFTER_S",
    "work_visibility_s": "HANDPIPE_WORK_VISIBILITY_S",
    "work_max_receives": "HANDPIPE_WORK_MAX_RECEIVES",
    "max_dispatches": "HANDPIPE_MAX_DISPATCHES",
    "silence_margin_s": "HANDPIPE_SILENCE_MARGIN_S",
    "export_inline_max_rows": "HANDPIPE_EXPORT_INLINE_MAX_ROWS",
    "webhook_timeout_s": "HANDPIPE_WEBHOOK_TIMEOUT_S",
    "notify_retry_base_s": "HANDPIPE_NOTIFY_RETRY_BASE_S",
    "multipart_threshold_bytes": "HANDPIPE_MULTIPART_THRESHOLD_BYTES",
    "multipart_part_bytes": "HANDPIPE_MULTIPART_PART_BYTES",
}
_ZERO_ALLOWED = {"warmup_ms", "silence_margin_s", "export_inline_max_rows"}


class NotConfigured(RuntimeError):
    """The stage's environment lacks a setting the app needs; the text names it."""


@dataclass(frozen=True)
class Settings:
    bucket: str
    jobs_queue_url: str
    work_queue_url: str
    db_url: str | None = None
    db_secret_arn: str | None = None
    db_tls: str = "preferred"  # MySQL: preferred | required | verify | disabled (adapters.database.TLS_MODES)
    db_ca_file: str | None = None  # with verify: the CA bundle to check the server's certificate against
    upload_url_expires_s: int = 900
    download_url_expires_s: int = 3600
    max_upload_bytes: int = 2 * 1024**3
    segment_ms: int | None = 20_000  # None: one segment per job, no probe
    warmup_ms: int = 2000
    max_active_jobs_per_video: int = 3
    max_in_flight_per_job: int = 50  # segments of one job on workers at once
    max_in_flight: int = 200  # segments of all jobs on workers at once (the worker's reserved concurrency)
    max_duration_ms: int = 4 * 3600 * 1000  # longer videos are refused when probed
    max_pixels: int = 3840 * 2160  # larger frames are refused when probed
    max_segments_per_job: int = 1000  # a plan with more segments fails its job
    max_frames_per_job: int = 1_000_000  # a plan expecting more frames fails its job (4 h at 60 fps: 864,000)
    stuck_after_s: int = 3600  # a job still QUEUED after this long is failed by the sweeper
    # A work item's visibility while a worker runs it: the worker's heartbeat keeps extending it, so a
    # dead worker's item is back in the queue within this long (handpipe_worker/heartbeat.py).
    work_visibility_s: int = 120
    work_max_receives: int = 3  # the work queue's maxReceiveCount
    max_dispatches: int = 2  # sends of one segment's work item before its job fails as lost
    silence_margin_s: int = 60  # added to the deliveries SQS allows before a silent segment counts as lost
    # Exports of up to this many rows are written while the caller waits; larger ones by the worker.
    export_inline_max_rows: int = 30_000
    auth: str = "api_key"  # api_key | iam | none (none: only for a stack nobody else can reach)
    api_keys: dict[str, str] = field(default_factory=dict)  # local stack only: key -> owner
    scope_callers: bool = True  # each caller sees only its own videos and jobs
    local_models: bool = False  # model_uri may name a file on the worker's disk: the local stack only
    region: str | None = None  # the Lambda's AWS_REGION: presigned URLs name the regional endpoint
    # Job-end notifications (docs/notifications.md): the notify queue, the SNS topic, and the master
    # secret owners' webhook secrets derive from (the value locally, a Secrets Manager ARN in AWS).
    notify_queue_url: str | None = None
    notify_topic_arn: str | None = None
    webhook_secret: str | None = None
    webhook_secret_arn: str | None = None
    allow_loopback_webhooks: bool = False  # the local stack only: webhooks to the caller's own machine
    webhook_timeout_s: int = 5  # a receiver that takes longer is tried again later
    notify_retry_base_s: int = 30  # the first retry's delay; each later one doubles it (at most 15 min)
    # Registrations above this size get a multipart upload (part URLs, complete, abort) instead of one
    # PUT; parts are this size, or larger when the file would need more than S3's 10,000 parts.
    multipart_threshold_bytes: int = 100 * 1024**2
    multipart_part_bytes: int = 16 * 1024**2
    # Objects put under this prefix, then `{owner}/`, are registered and processed (chalicelib.service.intake),
    # with ProcessOptions' defaults overridden by these options, then by the owner's own.
    upload_trigger_prefix: str = "incoming/"
    upload_trigger_options: dict[str, Any] = field(default_factory=dict)
    upload_trigger_owner_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    upload_trigger_tag: str = "upload-trigger"

    @property
    def segment_silence_s(self) -> int:
        """How long a segment sent to a worker may go unheard of before the sweeper takes its work
        item to be lost: every delivery SQS allows, each a full visibility timeout, plus a margin."""
        return self.work_visibility_s * self.work_max_receives + self.silence_margin_s

    @staticmethod
    def trigger_prefix_from_env(env: Mapping[str, str] | None = None) -> str:
        """The upload-trigger prefix alone (the local stack provisions the bucket's notification with it)."""
        return _trigger_prefix((os.environ if env is None else env).get("HANDPIPE_UPLOAD_TRIGGER_PREFIX"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [
            name
            for name in ("HANDPIPE_BUCKET", "HANDPIPE_JOBS_QUEUE_URL", "HANDPIPE_WORK_QUEUE_URL")
            if not env.get(name)
        ]
        if not env.get("HANDPIPE_DB_URL") and not env.get("HANDPIPE_DB_SECRET_ARN"):
            missing.append("HANDPIPE_DB_URL or HANDPIPE_DB_SECRET_ARN")
        if env.get("HANDPIPE_DB_TLS") and env["HANDPIPE_DB_TLS"] not in TLS_MODES:
            missing.append(f"HANDPIPE_DB_TLS to one of {', '.join(TLS_MODES)}")
        if missing:
            raise NotConfigured(
                f"handpipe is not configured: set {', '.join(missing)} "
                "(in .chalice/config.json for the stage, or run `handpipe up` for a local stack)"
            )

        defaults: dict[str, Any] = {f.name: f.default for f in fields(cls)}  # each default written once: on the field

        def number(name: str) -> Any:
            """The field's integer variable; unset, empty or (for most) 0 gives the field's default."""
            value = env.get(_NUMBER_VARIABLES[name])
            number = int(value) if value else defaults[name]
            return number if number or name in _ZERO_ALLOWED else defaults[name]

        segment_ms = env.get("HANDPIPE_SEGMENT_MS")
        return cls(
            bucket=env["HANDPIPE_BUCKET"],
            jobs_queue_url=env["HANDPIPE_JOBS_QUEUE_URL"],
            work_queue_url=env["HANDPIPE_WORK_QUEUE_URL"],
            db_url=env.get("HANDPIPE_DB_URL") or None,
            db_secret_arn=env.get("HANDPIPE_DB_SECRET_ARN") or None,
            db_tls=env.get("HANDPIPE_DB_TLS") or defaults["db_tls"],
            db_ca_file=env.get("HANDPIPE_DB_CA_FILE") or None,
            # "0": one segment per job, no probe
            segment_ms=None if segment_ms == "0" else int(segment_ms) if segment_ms else defaults["segment_ms"],
            **{name: number(name) for name in _NUMBER_VARIABLES},
            auth=auth_mode(env),
            # Local stacks and `chalice local`: keys listed here; the key a local client uses counts too.
            api_keys=parse_api_keys(env.get("HANDPIPE_API_KEYS") or _local_key(env.get("HANDPIPE_API_KEY"))),
            scope_callers=env.get("HANDPIPE_SCOPE_CALLERS", "true").lower() not in ("0", "false", "no"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            local_models=env.get("HANDPIPE_LOCAL_MODELS", "false").lower() in ("1", "true", "yes"),
            notify_queue_url=env.get("HANDPIPE_NOTIFY_QUEUE_URL") or None,
            notify_topic_arn=env.get("HANDPIPE_NOTIFY_TOPIC_ARN") or None,
            webhook_secret=env.get("HANDPIPE_WEBHOOK_SECRET") or None,
            webhook_secret_arn=env.get("HANDPIPE_WEBHOOK_SECRET_ARN") or None,
            allow_loopback_webhooks=_flag(env, "HANDPIPE_ALLOW_LOOPBACK_WEBHOOKS"),
            upload_trigger_prefix=_trigger_prefix(env.get("HANDPIPE_UPLOAD_TRIGGER_PREFIX")),
            upload_trigger_options=_json_object(env, "HANDPIPE_UPLOAD_TRIGGER_OPTIONS"),
            upload_trigger_owner_options=_json_object(env, "HANDPIPE_UPLOAD_TRIGGER_OWNER_OPTIONS"),
            upload_trigger_tag=env.get("HANDPIPE_UPLOAD_TRIGGER_TAG") or defaults["upload_trigger_tag"],
        )


def _trigger_prefix(value: str | None) -> str:
    """A folder of the bucket, "incoming/" by default: with the slash, so "incoming" cannot take "incoming2/"."""
    prefix = (value or "incoming/").strip()
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise NotConfigured(f"HANDPIPE_UPLOAD_TRIGGER_PREFIX must be a folder such as incoming/, got {value!r}")
    return prefix if prefix.endswith("/") else prefix + "/"


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise NotConfigured(f"{name} must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise NotConfigured(f"{name} must be a JSON object, got {type(value).__name__}")
    return value
