"""A scripted HTTP server on loopback for what the real API cannot be made to do on cue: answer 503
or 429 with a Retry-After, reset a connection, never answer. It also speaks routes that another branch
builds (GET /jobs, POST /jobs/{id}/cancel) in their agreed shape. Each request is recorded."""

from __future__ import annotations

import json
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    # "reset": close the connection with a RST; "hang": read the request, never answer; "short": send
    # the headers and half the body, then close
    action: str = "answer"


Script = Callable[[Seen], Reply]


class Loopback:
    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urllib.parse.urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    dict(urllib.parse.parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                owner.seen.append(seen)
                reply = owner.script(seen)
                if reply.action == "reset":
                    # SO_LINGER with a zero timeout: close() sends a RST, as a server that died would
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if reply.action == "hang":
                    owner._release.wait(30)
                    self.close_connection = True
                    return
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.action == "short":
                    self.wfile.write(raw[: len(raw) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="loopback", daemon=True)

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def job_view(
    number: int, *, status: str = "SUCCEEDED", tag: str | None = None, video: str | None = None
) -> dict[str, Any]:
    """A job as the API shows it (chalicelib.service.views.job_view), with made-up ids."""
    return {
        "id": f"job_{number:032x}",
        "video_id": video or f"vid_{number:032x}",
        "status": status,
        "options": {},
        "client_token": None,
        "tag": tag,
        "progress": {"frames_done": 10, "frames_total": 10, "percent": 100.0, "segments_done": 1, "segments_total": 1},
        "error": None,
        "timings": {
            "created_at": 1_780_000_000_000 - number,
            "started_at": None,
            "finished_at": None,
            "queued_ms": None,
            "run_ms": None,
        },
        "video": None,
        "summary": None,
    }


class JobsApi:
    """GET /jobs and POST /jobs/{id}/cancel in the shape agreed for them: filters, newest first, pages
    of `limit` with an opaque next_token; cancel answers the job CANCELLED, or 409 naming a finished
    job's status."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    def __call__(self, seen: Seen) -> Reply:
        if seen.method == "GET" and seen.path == "/jobs":
            return self._list(seen.query)
        if seen.method == "POST" and seen.path.startswith("/jobs/") and seen.path.endswith("/cancel"):
            job_id = seen.path.split("/")[2]
            job = next((j for j in self.jobs if j["id"] == job_id), None)
            if job is None:
                return Reply(404, {"code": "not_found", "message": f"no job {job_id}"})
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return Reply(409, {"code": "conflict", "message": f"job {job_id} has already {job['status']}"})
            job["status"] = "CANCELLED"
            return Reply(200, job)
        if seen.method == "GET" and seen.path.startswith("/jobs/"):
            job = next((j for j in self.jobs if j["id"] == seen.path.split("/")[2]), None)
            return Reply(200, job) if job else Reply(404, {"code": "not_found", "message": "no such job"})
        return Reply(404, {"code": "not_found", "message": f"no route {seen.method} {seen.path}"})

    def _list(self, query: dict[str, str]) -> Reply:
        found = [
            j
            for j in self.jobs
            if (not query.get("status") or j["status"] == query["status"].upper())
            and (not query.get("tag") or j["tag"] == query["tag"])
            and (not query.get("video_id") or j["video_id"] == query["video_id"])
        ]
        start = int(query.get("next_token") or 0)
        limit = int(query.get("limit") or 50)
        page = found[start : start + limit]
        more = start + limit < len(found)
        return Reply(200, {"jobs": page, "next_token": str(start + limit) if more else None})
