"""The one-process local stack behind `handpipe up` and `handpipe demo`: moto (S3, SQS), the
database, the Chalice routes served as `chalice local` serves them, and pollers that feed the
queues to the same handlers Lambda would run, with the worker in its own processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalice.local import ChaliceRequestHandler, ThreadedHTTPServer

from chalicelib.adapters.database import Database
from chalicelib.adapters.migrations import upgrade
from chalicelib.config import QUEUE_PREFIX_VARIABLE, Settings
from chalicelib.runtime import Runtime, runtime, use_runtime
from chalicelib.service.common import now_ms
from chalicelib.service.notifications import send_announcements
from chalicelib.shared.telemetry import use_telemetry
from chalicelib.web.auth import parse_api_keys

from .aws import MotoServer, aws_clients, provision, sns_client
from .console import JobEventConsole, LocalTelemetry, init_worker_process
from .pollers import LambdaContext, QueuePoller, drain, stop_all
from .resume import Resumed, resume

logger = logging.getLogger("handpipe.local.stack")

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 900  # the Lambda maximum, as deployed
# Short: the worker's heartbeat extends a running item's visibility, so only a dead worker's item
# comes back, and that within this long (worker_image/handpipe_worker/heartbeat.py).
WORK_VISIBILITY_S = 120
KEY_ALPHABET = string.ascii_letters + string.digits
NOTIFY_MAX_RECEIVES = 8  # a webhook is tried this often (after 1, 2, 4, ... s locally) before its DLQ


class PortInUse(OSError):
    """One of the stack's ports cannot be had; `service` says which ("api" or "moto")."""

    def __init__(self, service: str, port: int, reason: OSError) -> None:
        super().__init__(reason.errno, f"port {port} is taken ({reason.strerror or reason})")
        self.service, self.port, self.reason = service, port, reason


@dataclass(frozen=True)
class StackInfo:
    api_url: str
    aws_endpoint_url: str
    db_url: str
    bucket: str
    queue_urls: dict[str, str]
    dlq_urls: dict[str, str]
    workers: int
    api_key: str
    topic_arn: str | None = None


def _init_worker(parent_pid: int, verbose: bool) -> None:
    """Each worker process: its console (handpipe.local.console), and its end with the stack's."""
    init_worker_process(verbose)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """In each worker process: end when the stack that started it is gone (a kill -9 of `handpipe up`
    leaves its children running), as a container ends with its host, rather than finish an item nobody
    waits for and write it into the next stack."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _run_work_batch(event: dict[str, Any], remaining_s: float) -> dict[str, Any]:
    """Runs in a worker process, like one invocation in a worker container."""
    from handpipe_worker.handler import handler

    return handler(event, LambdaContext("handpipe-worker", remaining_s))


class WorkerPool:
    """N worker processes (N containers), one per work poller. Each runs in its own single-process
    executor, so a process that dies fails only the item it was running (SQS redelivers it); the
    slot starts a new process for its next item, and the other slots never notice."""

    def __init__(self, processes: int, *, verbose: bool = True) -> None:
        self.processes = processes
        self.verbose = verbose  # False: warnings only, and MediaPipe's native log lines dropped
        self._lock = threading.Lock()
        self._slots = [self._new_executor() for _ in range(processes)]

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: a fresh interpreter per worker, as a container is, with no copied threads or locks.
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), self.verbose),
        )

    def handler(self, slot: int) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
        """The handler for one work poller: it runs each item in this slot's process."""
        if not 0 <= slot < self.processes:
            raise ValueError(f"slot must be between 0 and {self.processes - 1}, got {slot}")

        def handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            with self._lock:
                executor = self._slots[slot]
            remaining_s = context.get_remaining_time_in_millis() / 1000
            try:
                return executor.submit(_run_work_batch, event, remaining_s).result()
            except BrokenProcessPool:
                with self._lock:
                    if self._slots[slot] is executor:
                        logger.warning("worker process %d died; starting a new one (SQS will redeliver its item)", slot)
                        self._slots[slot] = self._new_executor()
                executor.shutdown(wait=False)
                raise

        return handle

    def worker_pids(self) -> list[int]:
        """The live worker processes' ids, slot by slot (a slot starts its process with its first item)."""
        with self._lock:
            executors = list(self._slots)
        return [p.pid for executor in executors for p in getattr(executor, "_processes", {}).values() if p.pid]

    def shutdown(self) -> None:
        with self._lock:
            executors = list(self._slots)
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)


class LocalRequestHandler(ChaliceRequestHandler):
    """Chalice's local request handler with Nagle's algorithm off: it writes headers and body
    separately, and with Nagle on every keep-alive request waited ~40 ms for a delayed ACK."""

    disable_nagle_algorithm = True

    def _method_not_allowed(self) -> None:
        # http.server answers a method without a do_ handler 501 "Unsupported method" in HTML; the
        # API answers every method it does not serve 405 with its JSON error, as Chalice does.
        body = json.dumps({"code": "method_not_allowed", "message": f"{self.command} is not allowed here"}).encode()
        self.send_response(405)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_TRACE = do_CONNECT = do_QUERY = _method_not_allowed


class LocalApiServer(ThreadedHTTPServer):
    """Chalice's threaded local server with a listen backlog of 1024, not http.server's 5: with 5, a
    burst of 30 connections saw a third of them reset before a thread could accept them."""

    request_queue_size = 1024
    daemon_threads = True  # a client that keeps its connection open does not hold up a stop


class QuietRequestHandler(LocalRequestHandler):
    """Without the access-log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _scheduled_event() -> dict[str, Any]:
    """What EventBridge hands a scheduled Lambda."""
    return {
        "version": "0",
        "id": secrets.token_hex(16),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }


def new_local_key() -> str:
    """32 letters and digits (190 bits): no '-' a command line would read as an option (`--api-key -x...`)
    and nothing a shell or a URL would have to quote."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(32))


def _saved_key(data_dir: Path, name: str = "api_key") -> str:
    """The key kept in data_dir/NAME, made (readable by its owner only) the first time."""
    path = data_dir / name
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = new_local_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key


class LocalStack:
    def __init__(
        self,
        *,
        port: int = 8000,
        moto_port: int = 0,
        db_url: str | None = None,
        data_dir: str | Path = ".handpipe",
        workers: int | None = None,
        max_receives: int = 3,
        bucket: str = "handpipe-local",
        prefix: str = "handpipe",
        work_visibility_s: int = WORK_VISIBILITY_S,
        quiet: bool = False,
        job_events: bool = False,
        segment_ms: int | None = None,
        api_key: str | None = None,
        api_keys: str | None = None,
    ) -> None:
        self.port = port
        self.moto_port = moto_port
        self.data_dir = Path(data_dir)
        self.db_url = db_url or f"sqlite:///{(self.data_dir / 'handpipe.db').resolve()}"
        self.workers = workers or os.cpu_count() or 1
        self.max_receives = max_receives
        self.bucket = bucket
        self.prefix = prefix
        self.work_visibility_s = work_visibility_s
        # Callers need a key (x-api-key), as they need a usage plan's key in AWS. HANDPIPE_API_KEYS
        # (key=owner,...) gives several callers, each its own owner, so scoping can be tried locally.
        # A key made up here is kept in the data folder, so a restart does not take it from those
        # who were given it.
        keys_text = api_keys if api_keys is not None else os.environ.get("HANDPIPE_API_KEYS")
        self.api_keys = parse_api_keys(keys_text)  # ValueError for a key shorter than 16 characters
        self.api_key = (
            api_key
            or os.environ.get("HANDPIPE_API_KEY")
            or next(iter(self.api_keys), None)
            or _saved_key(self.data_dir)
        )
        self.api_keys.setdefault(self.api_key, "local")
        self.segment_ms = segment_ms  # None: the app's default; 0: one segment per job
        # quiet: no request log, no INFO lines from the handlers, no native log lines from the workers
        self.quiet = quiet
        self._events = JobEventConsole() if job_events else None  # one line per job event on stdout
        self._moto: MotoServer | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._pollers: list[QueuePoller] = []
        self._pool: WorkerPool | None = None
        self._sqs: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._stopping = threading.Event()
        self.info: StackInfo | None = None
        self.restored = 0  # S3 objects put back from the data folder on start
        self.resumed: Resumed | None = None
        self.announced = 0  # job ends the stopped stack had recorded and not announced, sent on start

    def start(self) -> StackInfo:
        """Start everything; should a part fail (a port taken: PortInUse), what had started is stopped."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The handlers' logs and metrics stay in standard logging here: no Powertools JSON, no EMF.
        use_telemetry(LocalTelemetry())
        if self._events is not None:
            self._events.start()
        # S3 objects are kept in files there too: moto alone would forget them when the stack stops.
        self._moto = MotoServer(self.moto_port, objects_dir=self.data_dir / "s3")
        try:
            endpoint = self._moto.start()
        except OSError as error:
            raise PortInUse("moto", self.moto_port, error) from None
        s3, sqs = aws_clients(endpoint)
        sns = sns_client(endpoint)
        self._sqs = sqs
        resources = provision(
            s3,
            sqs,
            bucket=self.bucket,
            prefix=self.prefix,
            max_receives=self.max_receives,
            visibility_timeouts={"work": self.work_visibility_s},
            max_receives_by_role={"notify": NOTIFY_MAX_RECEIVES},
            sns=sns,
            upload_trigger_prefix=Settings.trigger_prefix_from_env(),
        )
        self.restored = self._moto.keep_on_disk(s3, resources.bucket)
        database = Database.from_url(self.db_url)
        applied = upgrade(database)
        if applied:
            logger.info("database %s: applied migrations %s", self.db_url, applied)
        # The app and the worker processes read their settings from the environment, as in Lambda.
        environment = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HANDPIPE_BUCKET": resources.bucket,
            "HANDPIPE_JOBS_QUEUE_URL": resources.queue_urls["jobs"],
            "HANDPIPE_WORK_QUEUE_URL": resources.queue_urls["work"],
            "HANDPIPE_EVENTS_QUEUE_URL": resources.queue_urls["events"],
            "HANDPIPE_DB_URL": self.db_url,
            "HANDPIPE_NOTIFY_QUEUE_URL": resources.queue_urls["notify"],
            "HANDPIPE_NOTIFY_TOPIC_ARN": resources.topic_arn or "",
            # Webhooks may go to this machine (http://127.0.0.1:...), and retries come quickly.
            "HANDPIPE_ALLOW_LOOPBACK_WEBHOOKS": "true",
            "HANDPIPE_NOTIFY_RETRY_BASE_S": "1",
            "HANDPIPE_WEBHOOK_SECRET": _saved_key(self.data_dir, "webhook_master_secret"),
            "HANDPIPE_CANCEL_CHECK_INTERVAL_S": "1",  # a cancelled job's segments stop within about a second
            "HANDPIPE_WORK_MAX_RECEIVES": str(self.max_receives),
            "HANDPIPE_PROGRESS_INTERVAL_S": "1",
            # Fan-out is real here too: as many segments in flight as there are worker processes.
            "HANDPIPE_MAX_IN_FLIGHT": str(max(self.workers, 1) * 2),
            "HANDPIPE_AUTH": "api_key",
            "HANDPIPE_LOCAL_MODELS": "true",  # model_uri may be a path: the caller owns this machine
            "HANDPIPE_API_KEYS": ",".join(f"{key}={owner}" for key, owner in self.api_keys.items()),
            QUEUE_PREFIX_VARIABLE: self.prefix,
            "MPLCONFIGDIR": str((self.data_dir / "matplotlib").resolve()),
        }
        if self.segment_ms is not None:
            environment["HANDPIPE_SEGMENT_MS"] = str(self.segment_ms)
        self._saved_env = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        use_runtime(Runtime(Settings.from_env(), s3_client=s3, sqs_client=sqs, database=database, sns_client=sns))

        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))  # app.py sits at the project root, as Chalice wants it
        import app as chalice_app  # the routes and handlers, imported once their settings exist

        # The queues started empty; the database says what was waiting or running when the stack
        # last stopped. Sent before any handler starts, so nothing sent earlier is still in flight.
        rt = runtime()
        self.resumed = resume(rt.videos, rt.jobs, rt.store, rt.jobs_queue, rt.work_queue, rt.settings)
        # Job ends recorded and not yet announced: every claim on them is the stopped stack's, so all go now.
        self.announced = send_announcements(rt.jobs, rt.webhook_secrets, rt.notify_queue, claimed_before_ms=now_ms())
        try:
            self._start_api(chalice_app.app)
        except OSError as error:
            raise PortInUse("api", self.port, error) from None
        self._pool = WorkerPool(self.workers, verbose=not self.quiet)
        urls = resources.queue_urls
        self._pollers = [
            QueuePoller(sqs, urls["jobs"], chalice_app.plan_jobs, name="jobs", batch_size=1, timeout_s=60),
            QueuePoller(sqs, urls["events"], chalice_app.record_events, name="events", batch_size=10, timeout_s=60),
            QueuePoller(
                sqs, urls["notify"], chalice_app.deliver_notifications, name="notify", batch_size=10, timeout_s=60
            ),
            # The bucket's notifications of objects under incoming/ (S3 -> SQS -> intake_uploads, as deployed).
            QueuePoller(sqs, urls["uploads"], chalice_app.intake_uploads, name="uploads", batch_size=10, timeout_s=60),
        ] + [
            QueuePoller(
                sqs, urls["work"], self._pool.handler(n), name=f"work-{n}", batch_size=1, timeout_s=WORKER_TIMEOUT_S
            )
            for n in range(self.workers)
        ]
        for poller in self._pollers:
            poller.start()
        # The schedule that runs `sweep_stuck_jobs` every five minutes in AWS.
        self._sweeper = threading.Thread(target=self._sweep_periodically, name="sweeper", daemon=True)
        self._sweeper.start()
        self.info = StackInfo(
            api_url=f"http://127.0.0.1:{self.port}",
            aws_endpoint_url=endpoint,
            db_url=self.db_url,
            bucket=resources.bucket,
            queue_urls=dict(urls),
            dlq_urls=dict(resources.dlq_urls),
            workers=self.workers,
            api_key=self.api_key,
            topic_arn=resources.topic_arn,
        )
        return self.info

    def _sweep_periodically(self, interval_s: float = 60.0) -> None:
        import app as chalice_app

        while not self._stopping.wait(interval_s):
            try:
                chalice_app.sweep_stuck_jobs(_scheduled_event(), LambdaContext("handpipe-sweep", 60))
            except Exception:
                logger.exception("the sweeper failed; it runs again in %.0f s", interval_s)

    def _start_api(self, app_object: Any) -> None:
        from chalice.config import Config
        from chalice.local import LocalChalice, LocalDevServer, create_local_server

        config = Config.create(chalice_stage="local", app_name="handpipe", project_dir=str(REPO_ROOT))
        handler = QuietRequestHandler if self.quiet else LocalRequestHandler
        # create_local_server turns the app into a LocalChalice (once per process); the server itself
        # is ours, with a listen backlog for bursts of connections.
        if not isinstance(app_object, LocalChalice):
            create_local_server(app_object, config, "127.0.0.1", 0).server.server_close()
        self._server = LocalDevServer(
            app_object, config, "127.0.0.1", self.port, handler_cls=handler, server_cls=LocalApiServer
        )
        if self.quiet:
            logging.getLogger(app_object.app_name).setLevel(logging.WARNING)
        self.port = self._server.server.server_address[1]  # the real port when 0 was asked for
        self._server_thread = threading.Thread(target=self._server.server.serve_forever, name="api", daemon=True)
        self._server_thread.start()

    @property
    def worker_pool(self) -> WorkerPool | None:
        return self._pool

    @property
    def pollers(self) -> list[QueuePoller]:
        return list(self._pollers)

    def drain(self, timeout_s: float = 600) -> bool:
        """Wait until every queue is empty and every handler idle."""
        assert self.info is not None, "start the stack first"
        return drain(self._pollers, self._sqs, self.info.queue_urls, timeout_s)

    def stop(self) -> None:
        self._stopping.set()
        stop_all(self._pollers)
        if self._pool is not None:
            self._pool.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server.server_close()
        if self._moto is not None:
            self._moto.stop()
        if self._events is not None:
            self._events.stop()
        use_telemetry(None)
        use_runtime(None)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
