"""How long the local stack takes to come back from a kill -9 of `handpipe up` (issue 12, item 3): start
it as a user does, run one job to the end, start a second and kill the stack with SIGKILL while the
second runs, start it again on the same folder, and time how long until the API answers and until
the cut-off job has SUCCEEDED (resumed from the database).

    .venv/bin/python bench/restart.py [--workers 1] [--segment-ms 2000] [--video PATH]

Prints the phases and a RESULT line."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ is sys.path[0] when this file is run as a script.
from common import REPO, SAMPLE_CLIP, free_port, print_result  # noqa: E402

sys.path.insert(0, str(REPO))

from handpipe.client import ApiError, Client  # noqa: E402

DEFAULT_VIDEO = SAMPLE_CLIP


def start(args: argparse.Namespace, data_dir: Path, ports: tuple[int, int], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "handpipe.cli", "up", "--port", str(ports[0]), "--moto-port", str(ports[1])]
    command += ["--data-dir", str(data_dir), "--workers", str(args.workers), "--segment-ms", str(args.segment_ms)]
    env = {k: v for k, v in os.environ.items() if k != "HANDPIPE_API_KEY"}
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def wait_for_api(process: subprocess.Popen[bytes], url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    client = Client(url, timeout_s=5)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"handpipe up ended with {process.returncode}")
        try:
            if client.health()["status"] == "ok":
                return
        except (ConnectionError, ApiError):
            pass
        time.sleep(0.05)
    raise SystemExit("the API did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--segment-ms", type=int, default=2000)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="handpipe-restart-") as folder:
        data_dir, log = Path(folder) / "data", Path(folder) / "up.log"
        ports = (free_port(), free_port())
        url = f"http://127.0.0.1:{ports[0]}"
        process = start(args, data_dir, ports, log)
        try:
            wait_for_api(process, url)
            client = Client(url, api_key=(data_dir / "api_key").read_text().strip())
            first = client.wait(client.submit(args.video)["id"], poll_s=0.2, timeout_s=600)
            print(f"first job {first['status']} in {first['timings']['run_ms']} ms of running")
            second = client.submit(args.video)
            while client.get_job(second["id"])["progress"]["frames_done"] == 0:
                time.sleep(0.05)
            state = client.get_job(second["id"])["progress"]
            print(f"killing the stack with the second job at {state['frames_done']} frames")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

            restarted = time.perf_counter()
            process = start(args, data_dir, ports, log)
            wait_for_api(process, url)
            api_s = time.perf_counter() - restarted
            print(f"API answering {api_s:.2f} s after the restart")
            finished = client.wait(second["id"], poll_s=0.2, timeout_s=600)
            done_s = time.perf_counter() - restarted
            print(f"second job {finished['status']} {done_s:.2f} s after the restart")
            same = client.result(first["id"])["result"]["url"].startswith("http")
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    print_result(
        {
            "api_back_s": f"{api_s:.2f}",
            "resumed_job_done_s": f"{done_s:.2f}",
            "resumed_status": finished["status"],
            "first_result_answers": same,
        }
    )


if __name__ == "__main__":
    main()
