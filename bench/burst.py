"""How the local stack's API takes a burst of simultaneous connections (issue 12, item 8: with
http.server's listen backlog of 5, a third of 30 were reset). Starts a LocalStack, opens N sockets at
the same moment (non-blocking connects from one thread), sends GET /health on each and counts the
answers, for a few rounds.

    .venv/bin/python bench/burst.py [--connections 200] [--rounds 3]

Prints each round's answered count and time to the last answer, and a RESULT line."""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_result  # noqa: E402

from handpipe.local.stack import LocalStack  # noqa: E402


def one_round(port: int, connections: int, timeout_s: float) -> tuple[int, float]:
    """(answered 200, seconds from the first connect to the last answer)."""
    started = time.perf_counter()
    sockets = []
    for _ in range(connections):
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connection.setblocking(False)
        connection.connect_ex(("127.0.0.1", port))
        sockets.append(connection)
    answered = 0
    try:
        for connection in sockets:
            connection.settimeout(timeout_s)
            try:
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
            except OSError:
                continue
        for connection in sockets:
            received = b""
            try:
                while chunk := connection.recv(65536):
                    received += chunk
            except OSError:
                continue
            answered += received.startswith(b"HTTP/1.1 200")
    finally:
        for connection in sockets:
            connection.close()
    return answered, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per socket: an unanswered one counts as lost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="handpipe-burst-") as data_dir:
        with LocalStack(
            port=0, data_dir=data_dir, workers=1, bucket="bench-burst", prefix="burst", quiet=True
        ) as stack:
            assert stack.info is not None
            port = int(stack.info.api_url.rsplit(":", 1)[1])
            results = []
            for round_number in range(1, args.rounds + 1):
                answered, seconds = one_round(port, args.connections, args.timeout_s)
                results.append((answered, seconds))
                print(f"round {round_number}: {answered}/{args.connections} answered 200 in {seconds:.2f} s")
    worst = min(answered for answered, _ in results)
    slowest = max(seconds for _, seconds in results)
    print_result(
        {"connections": args.connections, "rounds": args.rounds, "min_answered": worst, "max_s": f"{slowest:.2f}"}
    )


if __name__ == "__main__":
    main()
