"""Tests for the local stack's AWS pieces, against a real moto server, so that provisioning, redrive
and the Lambda-like polling are checked against SQS and S3 behaviour rather than our assumptions."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.shared.contracts import queue_names
from handpipe.local.aws import MotoServer, Resources, aws_clients, provision
from handpipe.local.pollers import LambdaContext, QueuePoller, drain, stop_all

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

Clients = tuple["S3Client", "SQSClient"]
StartPoller = Callable[..., QueuePoller]


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(moto_server: MotoServer) -> Clients:
    return aws_clients(moto_server.endpoint_url)


def _unique(kind: str) -> str:
    # moto's state is shared by every test in the process, so each test gets its own names.
    return f"t{uuid.uuid4().hex[:10]}-{kind}"


def _provision(clients: Clients, **kwargs: Any) -> Resources:
    s3, sqs = clients
    return provision(s3, sqs, bucket=_unique("bucket"), prefix=_unique("hp"), **kwargs)


@pytest.fixture
def start_poller(clients: Clients) -> Iterator[StartPoller]:
    started: list[QueuePoller] = []

    def start(queue_url: str, handler: Callable[[dict[str, Any], LambdaContext], Any], **kwargs: Any) -> QueuePoller:
        kwargs.setdefault("name", f"poller-{len(started)}")
        poller = QueuePoller(clients[1], queue_url, handler, **kwargs)
        poller.start()
        started.append(poller)
        return poller

    yield start
    assert stop_all(started, timeout_s=10), "a poller did not stop"


def _queue_counts(sqs: SQSClient, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# moto server and provisioning
# ---------------------------------------------------------------------------------------------


def test_moto_server_context_manager_and_port_conflict(moto_server: MotoServer) -> None:
    with MotoServer() as other:
        assert other.endpoint_url.startswith("http://127.0.0.1:")
        assert other.endpoint_url != moto_server.endpoint_url
        s3, _ = aws_clients(other.endpoint_url)
        s3.list_buckets()
    with pytest.raises(RuntimeError):
        _ = other.endpoint_url
    taken = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=str(taken)):
        MotoServer(port=taken).start()


def test_provision_creates_bucket_queues_and_dlqs(clients: Clients) -> None:
    s3, sqs = clients
    bucket, prefix = _unique("bucket"), _unique("hp")
    resources = provision(s3, sqs, bucket=bucket, prefix=prefix, upload_trigger_prefix="incoming/")

    assert resources.bucket == bucket
    s3.head_bucket(Bucket=bucket)
    (rule,) = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert {"PUT", "GET"} <= set(rule["AllowedMethods"])
    assert rule["AllowedOrigins"] == ["*"]

    expected_timeouts = {"jobs": 60, "work": 900, "events": 60, "notify": 60, "uploads": 60}
    names = queue_names(prefix)
    assert set(resources.queue_urls) == set(resources.dlq_urls) == set(resources.queue_arns) == set(names)
    for role, name in names.items():
        assert resources.queue_urls[role].endswith(f"/{name}")
        assert resources.dlq_urls[role].endswith(f"/{name}-dlq")
        attributes = sqs.get_queue_attributes(QueueUrl=resources.queue_urls[role], AttributeNames=["All"])["Attributes"]
        assert attributes["QueueArn"] == resources.queue_arns[role]
        assert int(attributes["VisibilityTimeout"]) == expected_timeouts[role]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == resources.dlq_arns[role]
        assert redrive["deadLetterTargetArn"].endswith(f":{name}-dlq")
        assert int(redrive["maxReceiveCount"]) == 3
        dlq_attributes = sqs.get_queue_attributes(QueueUrl=resources.dlq_urls[role], AttributeNames=["All"])[
            "Attributes"
        ]
        assert dlq_attributes["QueueArn"] == resources.dlq_arns[role]
        assert "RedrivePolicy" not in dlq_attributes
    # Objects created under incoming/ are reported to the uploads queue, as the deployed bucket does.
    [notify] = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert notify["QueueArn"] == resources.queue_arns["uploads"] and notify["Events"] == ["s3:ObjectCreated:*"]
    assert notify["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "incoming/"}]


def test_provision_makes_the_job_end_topic_and_gives_the_notify_queue_its_own_receive_count(
    clients: Clients, moto_server: MotoServer
) -> None:
    from handpipe.local.aws import sns_client, topic_name

    s3, sqs = clients
    sns = sns_client(moto_server.endpoint_url)
    prefix = _unique("hp")
    first = provision(s3, sqs, bucket=_unique("bucket"), prefix=prefix, max_receives_by_role={"notify": 8}, sns=sns)
    assert first.topic_arn and first.topic_arn.endswith(f":{topic_name(prefix)}")
    again = provision(s3, sqs, bucket=first.bucket, prefix=prefix, max_receives_by_role={"notify": 8}, sns=sns)
    assert again.topic_arn == first.topic_arn
    # Every page: the session's moto server holds every test's topics, and a page is 100 of them.
    topics = [t["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for t in page["Topics"]]
    assert topics.count(first.topic_arn) == 1
    receives = {
        role: json.loads(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
        )["maxReceiveCount"]
        for role, url in first.queue_urls.items()
    }
    assert {role: int(n) for role, n in receives.items()} == {
        "jobs": 3,
        "work": 3,
        "events": 3,
        "notify": 8,
        "uploads": 3,
    }
    assert _provision(clients).topic_arn is None  # without an SNS client, no topic


def test_provision_twice_is_fine_and_applies_new_settings(clients: Clients) -> None:
    s3, sqs = clients
    bucket, prefix = _unique("bucket"), _unique("hp")
    first = provision(s3, sqs, bucket=bucket, prefix=prefix)
    assert provision(s3, sqs, bucket=bucket, prefix=prefix) == first

    changed = provision(s3, sqs, bucket=bucket, prefix=prefix, max_receives=5, visibility_timeouts={"work": 30})
    assert changed.queue_urls == first.queue_urls
    attributes = sqs.get_queue_attributes(QueueUrl=changed.queue_urls["work"], AttributeNames=["All"])["Attributes"]
    assert int(attributes["VisibilityTimeout"]) == 30
    assert int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"]) == 5


def test_provision_rejects_unknown_roles(clients: Clients) -> None:
    with pytest.raises(ValueError, match="nope"):
        _provision(clients, visibility_timeouts={"nope": 1})


# ---------------------------------------------------------------------------------------------
# Pollers
# ---------------------------------------------------------------------------------------------


def test_poller_delivers_lambda_event_and_deletes_on_success(clients: Clients, start_poller: StartPoller) -> None:
    _, sqs = clients
    resources = _provision(clients)
    url = resources.queue_urls["jobs"]
    body = json.dumps({"version": 1, "type": "job.requested", "job_id": "j", "video_id": "v", "text": "héllo"})
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={"origin": {"DataType": "String", "StringValue": "test"}},
    )
    seen: queue.Queue[tuple[dict[str, Any], LambdaContext, int]] = queue.Queue()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        seen.put((event, context, context.get_remaining_time_in_millis()))

    poller = start_poller(url, handler, name="orchestrator", timeout_s=30)
    event, context, remaining_ms = seen.get(timeout=10)

    (record,) = event["Records"]
    assert set(record) >= {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["messageId"] == sent["MessageId"]
    assert record["body"] == body
    assert record["md5OfBody"] == sent["MD5OfMessageBody"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == resources.queue_arns["jobs"]
    assert record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    for name in ("SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"):
        assert record["attributes"][name]
    assert record["messageAttributes"]["origin"]["stringValue"] == "test"
    assert record["messageAttributes"]["origin"]["dataType"] == "String"

    assert context.function_name == "orchestrator"
    assert context.invoked_function_arn.endswith(":function:orchestrator")
    uuid.UUID(context.aws_request_id)
    assert 0 < remaining_ms <= 30_000

    assert drain([poller], sqs, resources.queue_urls, timeout_s=10)
    assert _queue_counts(sqs, url) == (0, 0)
    stats = poller.stats
    assert (stats.batches, stats.messages_received, stats.messages_deleted, stats.handler_errors) == (1, 1, 1, 0)
    assert poller.is_idle()


def test_batch_item_failures_delete_only_the_successes(clients: Clients, start_poller: StartPoller) -> None:
    _, sqs = clients
    resources = _provision(clients, visibility_timeouts={"work": 1})
    url = resources.queue_urls["work"]
    sqs.send_message(QueueUrl=url, MessageBody="good")
    sqs.send_message(QueueUrl=url, MessageBody="bad")
    deliveries: list[tuple[str, str]] = []
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        failures = []
        for record in event["Records"]:
            count = record["attributes"]["ApproximateReceiveCount"]
            with lock:
                deliveries.append((record["body"], count))
            if record["body"] == "bad" and count == "1":
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    poller = start_poller(url, handler)
    _wait_for(lambda: ("bad", "2") in deliveries, 10, "the failed message to come back")
    assert drain([poller], sqs, [url], timeout_s=10)

    assert sorted(deliveries) == [("bad", "1"), ("bad", "2"), ("good", "1")]
    assert _queue_counts(sqs, url) == (0, 0)
    assert _queue_counts(sqs, resources.dlq_urls["work"]) == (0, 0)
    assert poller.stats.items_failed == 1
    assert poller.stats.messages_deleted == 2
    assert poller.stats.handler_errors == 0


def test_invalid_batch_item_failures_fail_the_whole_batch(clients: Clients, start_poller: StartPoller) -> None:
    _, sqs = clients
    resources = _provision(clients, visibility_timeouts={"events": 1})
    url = resources.queue_urls["events"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    counts: list[str] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        counts.extend(record["attributes"]["ApproximateReceiveCount"] for record in event["Records"])
        if len(counts) == 1:
            return {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-this-batch"}]}
        return {"batchItemFailures": []}

    poller = start_poller(url, handler)
    _wait_for(lambda: len(counts) == 2, 10, "redelivery after an invalid response")
    assert drain([poller], sqs, [url], timeout_s=10)
    assert counts == ["1", "2"]
    assert poller.stats.handler_errors == 1


def test_raising_handler_sends_message_to_dlq_after_max_receives(clients: Clients, start_poller: StartPoller) -> None:
    _, sqs = clients
    resources = _provision(clients, max_receives=2, visibility_timeouts={"work": 1})
    url, dlq_url = resources.queue_urls["work"], resources.dlq_urls["work"]
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    errors: list[tuple[str, BaseException]] = []
    calls: list[str] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        calls.extend(record["attributes"]["ApproximateReceiveCount"] for record in event["Records"])
        raise RuntimeError("cannot process this")

    poller = start_poller(url, handler, name="worker", on_error=lambda name, exc: errors.append((name, exc)))
    _wait_for(lambda: _queue_counts(sqs, dlq_url) == (1, 0), 15, "the message to reach the DLQ")

    assert _queue_counts(sqs, url) == (0, 0)
    assert calls == ["1", "2"]
    assert [name for name, _ in errors] == ["worker", "worker"]
    assert all(isinstance(exc, RuntimeError) for _, exc in errors)
    assert poller.stats.handler_errors == 2
    assert poller.stats.messages_deleted == 0
    (dead,) = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=1)["Messages"]
    assert dead["Body"] == "poison"
    assert drain([poller], sqs, [url], timeout_s=5)


def test_several_pollers_share_a_queue(clients: Clients, start_poller: StartPoller) -> None:
    _, sqs = clients
    resources = _provision(clients)
    url = resources.queue_urls["work"]
    for start in range(0, 30, 10):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(start, start + 10)]
        )
    bodies: list[str] = []
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        time.sleep(0.05)  # long enough that the pollers overlap
        with lock:
            bodies.extend(record["body"] for record in event["Records"])

    pollers = [start_poller(url, handler, batch_size=3) for _ in range(3)]
    assert drain(pollers, sqs, [url], timeout_s=15)
    assert sorted(bodies, key=int) == [str(i) for i in range(30)]
    assert sum(poller.stats.messages_deleted for poller in pollers) == 30
    assert sum(1 for poller in pollers if poller.stats.batches) >= 2


def test_drain_times_out_while_messages_wait(clients: Clients) -> None:
    _, sqs = clients
    resources = _provision(clients)
    sqs.send_message(QueueUrl=resources.queue_urls["events"], MessageBody="nobody polls this")
    assert not drain([], sqs, resources.queue_urls, timeout_s=0.3)


def test_lambda_context_counts_down() -> None:
    context = LambdaContext("fn", timeout_s=0.2, region="eu-west-1", account_id="111122223333")
    assert 0 < context.get_remaining_time_in_millis() <= 200
    assert context.invoked_function_arn == "arn:aws:lambda:eu-west-1:111122223333:function:fn"
    assert context.log_group_name == "/aws/lambda/fn"
    time.sleep(0.25)
    assert context.get_remaining_time_in_millis() == 0


# ---------------------------------------------------------------------------------------------
# Presigned uploads
# ---------------------------------------------------------------------------------------------


def test_presigned_put_works_over_plain_http(clients: Clients, moto_server: MotoServer) -> None:
    s3, _ = clients
    resources = _provision(clients)
    key = "videos/vid_0/clip.mp4"
    payload = b"\x00\x00\x00\x18ftypmp42 not really a video"
    put_url = s3.generate_presigned_url(
        "put_object",
        Params={"Bucket": resources.bucket, "Key": key, "ContentType": "video/mp4"},
        ExpiresIn=300,
    )
    assert put_url.startswith(f"{moto_server.endpoint_url}/{resources.bucket}/")

    request = urllib.request.Request(put_url, data=payload, method="PUT", headers={"Content-Type": "video/mp4"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    stored = s3.get_object(Bucket=resources.bucket, Key=key)
    assert stored["Body"].read() == payload
    assert stored["ContentType"] == "video/mp4"
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": resources.bucket, "Key": key})
    with urllib.request.urlopen(get_url, timeout=10) as response:
        assert response.read() == payload
