"""Faults the local stack must ride out: a worker process killed while another runs, a burst of
connections to the API, and (with the stack as a subprocess) a kill -9 of `handpipe up` itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from handpipe import cli
from handpipe.client import ApiError, Client
from handpipe.local.stack import LocalStack
from tests.support.paths import REPO, data_path
from tests.support.waiting import wait_for


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

        wait_for(both_running, "both jobs to be mid-item")
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


# ------------------------------------------------------------------------------------------------- kill -9 of the stack


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Up:
    """`handpipe up` as the user runs it, in its own process (and session), on fixed ports."""

    def __init__(self, data_dir: Path, port: int, moto_port: int, log: Path) -> None:
        self.data_dir, self.port, self.moto_port, self.log = data_dir, port, moto_port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Client:
        env = {k: v for k, v in os.environ.items() if k != "HANDPIPE_API_KEY"}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "handpipe.cli",
                    "up",
                    "--port",
                    str(self.port),
                    "--moto-port",
                    str(self.moto_port),
                    "--data-dir",
                    str(self.data_dir),
                    "--workers",
                    "1",
                    "--segment-ms",
                    "2000",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        client = Client(f"http://127.0.0.1:{self.port}", timeout_s=10)

        def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                return client.health()["status"] == "ok"
            except (ConnectionError, ApiError):
                return False

        wait_for(answers, "handpipe up to answer", timeout_s=120, poll_s=0.2)
        # The API answers as soon as it listens; the header (with the key) is printed once everything has started.
        wait_for(lambda: "job events follow" in self.log.read_text(), "handpipe up's header", timeout_s=60, poll_s=0.2)
        key_lines = [line for line in self.log.read_text().splitlines() if line.startswith("API key")]
        client.api_key = key_lines[-1].split()[2]
        return client

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no handler runs, nothing is flushed or stopped
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
        return data


def test_a_kill_9_of_handpipe_up_loses_nothing_it_accepted(tmp_path: Path) -> None:
    """Through `handpipe up` in a subprocess: one job finishes (result, pictures, exports, insights),
    a second is mid-way (segments running and waiting) when the stack is killed with SIGKILL. Started
    again on the same folder, it keeps its key; the second job resumes from the database and
    succeeds; the first's earlier URLs and everything read through the API answer as before, and its
    video takes a new job."""
    up = _Up(tmp_path / "data", _free_port(), _free_port(), tmp_path / "up.log")
    try:
        client = up.start()
        key = client.api_key
        clip = data_path("videos/one_hand_wave_portrait.mp4")
        first = client.wait(client.submit(clip, title="before")["id"], poll_s=0.3, timeout_s=300)
        assert first["status"] == "SUCCEEDED", first
        pictures = tmp_path / "pictures"
        assert len(client.download_pictures(first["id"], pictures, wait_s=120)) == 2
        before = {
            "result": client.result(first["id"]),
            "frames": list(client.frames(first["id"], page_size=100)),
            "insights": client.insights(first["id"]),
            "export": client.export(first["id"], "csv", poll_s=1),
            "viewer": client.request("GET", f"/jobs/{first['id']}/viewer/config"),
        }
        result_bytes = _get(before["result"]["result"]["url"])
        sheet_bytes = _get(before["result"]["pictures"]["contact_sheet"])
        export_bytes = _get(before["export"]["url"])

        second = client.submit(clip, title="cut off")
        wait_for(lambda: client.get_job(second["id"])["progress"]["frames_done"] > 0, "the second job to run")
        state = client.get_job(second["id"])
        assert state["status"] == "IN_PROGRESS" and state["progress"]["segments_done"] < 3, state
        workers = up.worker_pids()
        assert workers, "no worker process"
        up.kill()
        # Its worker processes end with it, rather than finish items into the next stack.
        wait_for(lambda: not any(_alive(pid) for pid in workers), "the orphaned workers to end", timeout_s=30)

        again = up.start()
        assert again.api_key == key  # kept in the data folder: what the user was told still works
        assert "resumed jobs      0 requested, 1 redispatched" in up.log.read_text()
        finished = again.wait(second["id"], poll_s=0.3, timeout_s=300)
        assert finished["status"] == "SUCCEEDED", finished
        assert finished["summary"]["frames_processed"] == 180
        assert [f["index"] for f in again.frames(second["id"], page_size=200)] == list(range(180))

        # What was stored before the kill, read again: the same URLs, the same answers.
        assert _get(before["result"]["result"]["url"]) == result_bytes
        assert _get(before["result"]["pictures"]["contact_sheet"]) == sheet_bytes
        assert _get(before["export"]["url"]) == export_bytes
        assert list(again.frames(first["id"], page_size=100)) == before["frames"]
        assert again.insights(first["id"]) == before["insights"]
        assert again.export(first["id"], "csv")["rows"] == before["export"]["rows"]
        viewer = again.request("GET", f"/jobs/{first['id']}/viewer/config")
        assert _get(viewer["video_url"]) == clip.read_bytes()
        assert again.get_job(first["id"])["status"] == "SUCCEEDED"
        assert again.create_job(first["video_id"], {"sample_fps": 5})["status"] == "QUEUED"
    finally:
        up.stop()
        if up.log.exists():  # shown when the test fails: the stack's own account, without the request log
            print("\n".join(line for line in up.log.read_text().splitlines() if '" 200 -' not in line)[-8000:])


def test_the_upload_command_gives_a_video_without_its_file_a_new_url(tmp_path: Path) -> None:
    """A video registered and never uploaded (its URL expired unused, say): `handpipe upload` fetches a
    new URL and puts the file; asked again, the API answers that the video has its file."""
    with LocalStack(port=0, data_dir=tmp_path, workers=1, bucket="stack-again", prefix="again", quiet=True) as stack:
        assert stack.info is not None
        client = Client(stack.info.api_url, api_key=stack.info.api_key)
        clip = data_path("videos/one_hand_wave_portrait.mp4")
        video = client.register_video(clip)
        api = ["--api-url", stack.info.api_url, "--api-key", stack.info.api_key]
        assert cli.main(["upload", video["id"], str(clip), *api]) == 0
        assert cli.main(["upload", video["id"], str(clip), *api]) == 1
        with pytest.raises(ApiError) as refused:
            client.new_upload_url(video["id"])
        assert (refused.value.status, refused.value.code) == (409, "conflict")
        assert "has its file already" in refused.value.message
