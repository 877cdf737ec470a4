"""Child processes the devkit, tests and benchmarks start (workers, servers): stopped the same way."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM (a worker drains and exits), then SIGKILL if it is still there after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
