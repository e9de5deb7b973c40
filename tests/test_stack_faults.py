"""Faults the local stack must ride out: a worker process killed while another runs, a burst of
connections to the API, and (with the stack as a subprocess) a kill -9 of `handpipe up` itself."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from handpipe.client import Client
from handpipe.stack import LocalStack
from tests.conftest import data_path


def _wait_for(condition: object, what: str, timeout_s: float = 300, poll_s: float = 0.1) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def test_a_dead_worker_process_fails_only_its_own_item(tmp_path: Path) -> None:
    """Two jobs of one segment each run at once in the two worker processes; kill -9 one process.
    Only the item it ran fails (and is redelivered); the other runs on to the end untouched."""
    with LocalStack(
        port=0, data_dir=tmp_path, workers=2, bucket="stack-one", prefix="one", work_visibility_s=3, segment_ms=0
    ) as stack:
        assert stack.info is not None and stack.worker_pool is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        clip = data_path("videos/one_hand_wave_portrait.mp4")
        jobs = [client.submit(clip, title=f"clip {n}") for n in range(2)]

        def both_running() -> bool:
            states = [client.get_job(job["id"]) for job in jobs]
            return all(s["status"] == "IN_PROGRESS" and s["progress"]["frames_done"] > 0 for s in states)

        _wait_for(both_running, "both jobs to be mid-item")
        pids = stack.worker_pool.worker_pids()
        assert len(pids) == 2, pids
        before = [client.get_job(job["id"])["progress"]["frames_done"] for job in jobs]
        assert all(0 < done < 180 for done in before), before
        os.kill(pids[0], 9)

        finished = [client.wait(job["id"], poll_s=0.3, timeout_s=300) for job in jobs]
        assert [f["status"] for f in finished] == ["SUCCEEDED", "SUCCEEDED"], finished
        assert all(f["summary"]["frames_processed"] == 180 for f in finished)
        work = [p for p in stack.pollers if p.name.startswith("work")]
        # One failed invocation in all: the killed process's item. Its neighbour was not cut off.
        assert sum(p.stats.handler_errors for p in work) == 1, [p.stats for p in work]
        assert pids[1] in stack.worker_pool.worker_pids()  # the other process lives on, never replaced


def test_the_api_accepts_a_burst_of_simultaneous_connections(tmp_path: Path) -> None:
    """200 sockets connect at the same moment (non-blocking connects from one thread, so they
    really are simultaneous), then each sends a request: every one is answered 200. With
    http.server's backlog of 5, most of such a burst was never accepted."""
    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="stack-burst", prefix="burst", quiet=True) as stack:
        assert stack.info is not None
        port = int(stack.info.api_url.rsplit(":", 1)[1])
        sockets = []
        try:
            for _ in range(200):
                connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                connection.setblocking(False)
                connection.connect_ex(("127.0.0.1", port))
                sockets.append(connection)
            answers: list[bytes] = []
            for connection in sockets:
                connection.settimeout(60)  # a bound on a lost connection, far above any real answer
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
            for connection in sockets:
                received = b""
                while chunk := connection.recv(65536):
                    received += chunk
                answers.append(received.split(b"\r\n", 1)[0])
        finally:
            for connection in sockets:
                connection.close()
        assert answers == [b"HTTP/1.1 200 OK"] * 200, sorted(set(answers))
