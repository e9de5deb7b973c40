"""MediaPipe's C++ side (absl logging, TensorFlow Lite) writes INFO and WARNING lines straight to file
descriptor 2 ("GPU suport is not available", "Feedback manager requires a model with a single signature"),
which no environment variable turns off and nobody can act on. This filter drops exactly those and passes
everything else through, native errors and crashes above all."""

from __future__ import annotations

import os
import re
import sys
import threading

# absl's "I0000 00:00:1796168327.511880   16040 task_runner.cc:85] ..." (I: info, W: warning; E and F
# stay), and the two lines TensorFlow Lite and absl print before their logging is set up.
NOISE = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
)

_lock = threading.Lock()
_installed = False


def is_noise(line: bytes) -> bool:
    return NOISE.match(line) is not None


def filter_native_stderr() -> bool:
    """Once per process: descriptor 2 becomes a pipe that a thread reads, dropping the noise and writing
    the rest to the real stderr. Python's own sys.stderr writes to the real one directly, so a traceback
    never waits on the thread. True if this call installed it."""
    global _installed
    with _lock:
        if _installed:
            return False
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        sys.stderr = os.fdopen(os.dup(real), "w", buffering=1)
        threading.Thread(target=_forward, args=(read_end, real), name="native-stderr", daemon=True).start()
        _installed = True
        return True


def _forward(read_end: int, real: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if not is_noise(line):
                os.write(real, line)
